//! `llm-sidecar-mock`: an OpenAI- and Anthropic-compatible provider for the quickstart,
//! tests and benchmarks.
//!
//! It speaks the real wire formats: chat completions (JSON, and SSE with
//! `chat.completion.chunk` events, a usage chunk when `stream_options.include_usage` is
//! set, and `data: [DONE]`), Anthropic messages (JSON, and the `message_start` …
//! `message_stop` event sequence), `GET /v1/models` and embeddings. Errors use each
//! provider's error JSON.
//!
//! Behaviour is set per server ([`MockOptions`]) and can be overridden per request with
//! headers:
//!
//! | header | effect |
//! |---|---|
//! | `x-mock-latency-ms` | wait before the response headers |
//! | `x-mock-chunks` | number of content tokens (SSE events) |
//! | `x-mock-echo` | chat: the answer repeats the last user message first |
//! | `x-mock-ascii` | chat: JSON and SSE answers escape every non-ASCII character as `\uXXXX`, as Python's `json.dumps` does |
//! | `x-mock-interval-ms` | pause between SSE events |
//! | `x-mock-status` | answer with this status and the provider's error JSON |
//! | `x-mock-retry-after` | an injected error (`x-mock-status`, `fail_every`) carries this `Retry-After` |
//! | `x-mock-stall-after` | stop sending (but keep the connection open) after N events |
//!
//! | `x-mock-tool-calls` | answer with N tool calls (Chat, Messages, Bedrock Converse, Gemini) |
//!
//! Amazon Bedrock (`/model/{id}/converse`, `/converse-stream`, `/invoke`,
//! `/invoke-with-response-stream`, in AWS event-stream framing) and Gemini on Vertex AI
//! (`…/publishers/google/models/{id}:generateContent`, `:streamGenerateContent`) are in
//! `bedrock.rs` and `gemini.rs`. Chat, Messages, Converse and Gemini requests are checked
//! against their API's documented rules and refused (400, in the API's error shape) when
//! they break one.
//!
//! With recording on, every request (headers, body, connection id, HTTP version) is kept
//! and served at `GET /_mock/requests`.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod bedrock;
mod gemini;

type Body = BoxBody<Bytes, Infallible>;

#[derive(Clone, Debug)]
pub struct MockOptions {
    pub listen: SocketAddr,
    /// Wait before sending response headers.
    pub latency: Duration,
    /// Content tokens per response (one SSE event each).
    pub chunks: usize,
    /// Pause between SSE events.
    pub interval: Duration,
    /// When set, requests must carry this key (`Authorization: Bearer`, `x-api-key` or
    /// `api-key`), or get 401.
    pub require_key: Option<String>,
    /// Answer every `fail_every`th request with `fail_status` (default 500).
    pub fail_every: Option<u64>,
    pub fail_status: u16,
    /// Keep the last N requests for `/_mock/requests` (0: off).
    pub record: usize,
    /// Serve TLS (HTTP/2 and HTTP/1.1 by ALPN).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            latency: Duration::ZERO,
            chunks: 8,
            interval: Duration::from_millis(20),
            require_key: None,
            fail_every: None,
            fail_status: 500,
            record: 0,
            tls: None,
        }
    }
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub connection: u64,
    pub version: http::Version,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn to_json(&self) -> Value {
        let headers: Vec<Value> = self
            .headers
            .iter()
            .map(|(n, v)| json!([n.as_str(), String::from_utf8_lossy(v.as_bytes())]))
            .collect();
        json!({
            "connection": self.connection,
            "version": format!("{:?}", self.version),
            "method": self.method.as_str(),
            "path": self.path,
            "headers": headers,
            "body_len": self.body.len(),
            "body_sha256": hex::encode(Sha256::digest(&self.body)),
            "body": String::from_utf8_lossy(&self.body[..self.body.len().min(64 * 1024)]),
        })
    }
}

#[derive(Default)]
struct Recorder {
    cap: usize,
    items: Mutex<std::collections::VecDeque<Recorded>>,
}

impl Recorder {
    fn push(&self, r: Recorded) {
        if self.cap == 0 {
            return;
        }
        if let Ok(mut q) = self.items.lock() {
            if q.len() >= self.cap {
                q.pop_front();
            }
            q.push_back(r);
        }
    }
}

struct State {
    opts: MockOptions,
    recorder: Recorder,
    requests: AtomicU64,
    connections: AtomicU64,
    /// Body frames (SSE events, chunks) handed to the connection.
    frames_sent: AtomicU64,
    /// Response bodies dropped before their end: the client (the sidecar) went away.
    bodies_cut: AtomicU64,
}

/// A response body that counts what the connection took of it, and whether it was
/// dropped before its end (a hang-up that reached this server).
struct Tracked {
    inner: Body,
    state: Arc<State>,
    ended: bool,
}

impl Tracked {
    fn body(inner: Body, state: Arc<State>) -> Body {
        let ended = hyper::body::Body::is_end_stream(&inner);
        BodyExt::boxed(Tracked {
            inner,
            state,
            ended,
        })
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(_)) => {
                self.state.frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            std::task::Poll::Ready(None) => self.ended = true,
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.ended && !hyper::body::Body::is_end_stream(&self.inner) {
            self.state.bodies_cut.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A running mock.
pub struct MockServer {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl MockServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` or `https://` base URL with the bound address.
    pub fn url(&self) -> String {
        let scheme = if self.state.opts.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Requests recorded so far (oldest first).
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state
            .recorder
            .items
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn clear(&self) {
        if let Ok(mut q) = self.state.recorder.items.lock() {
            q.clear();
        }
    }

    /// Requests answered so far.
    pub fn request_count(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Response body frames (SSE events, chunks) handed to connections so far.
    pub fn frames_sent(&self) -> u64 {
        self.state.frames_sent.load(Ordering::Relaxed)
    }

    /// Response bodies dropped before their end, because the client went away.
    pub fn bodies_cut(&self) -> u64 {
        self.state.bodies_cut.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Binds and starts serving in the current Tokio runtime.
pub async fn start(opts: MockOptions) -> std::io::Result<MockServer> {
    // A provider's accept queue is deep; tokio's `bind` asks for 1,024, which a burst of
    // thousands of new streams overflows (the kernel then drops the handshake's last ACK
    // and the sidecar sees a reset: not what a provider does).
    let socket = if opts.listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(opts.listen)?;
    let listener = socket.listen(65_535)?;
    let addr = listener.local_addr()?;
    let state = Arc::new(State {
        recorder: Recorder {
            cap: opts.record,
            items: Mutex::new(Default::default()),
        },
        opts,
        requests: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        frames_sent: AtomicU64::new(0),
        bodies_cut: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, state.clone(), stop.clone()));
    Ok(MockServer { addr, state, stop })
}

async fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let acceptor = state.opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let _ = tcp.set_nodelay(true);
        let conn_id = state.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let state = state.clone();
        let stop = stop.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move {
                    let r = handle(state.clone(), conn_id, req).await?;
                    Ok::<_, Infallible>(r.map(|b| Tracked::body(b, state)))
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match acceptor {
                Some(a) => {
                    let Ok(tls) = a.accept(tcp).await else { return };
                    let conn = builder.serve_connection(TokioIo::new(tls), svc);
                    tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                }
            }
        });
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

fn header_num(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

async fn handle(
    state: Arc<State>,
    conn: u64,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let route = parts.uri.path().to_string();
    if !route.starts_with("/_mock/") {
        state.recorder.push(Recorded {
            connection: conn,
            version: parts.version,
            method: parts.method.clone(),
            path: path.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    let h = &parts.headers;
    let api = if route.ends_with("/messages") {
        Api::Anthropic
    } else {
        Api::OpenAi
    };

    match (&parts.method, route.as_str()) {
        (&Method::GET, "/_mock/requests") => {
            let items: Vec<Value> = state
                .recorder
                .items
                .lock()
                .map(|q| q.iter().map(Recorded::to_json).collect())
                .unwrap_or_default();
            return Ok(json_response(StatusCode::OK, &Value::Array(items)));
        }
        (&Method::DELETE, "/_mock/requests") => {
            if let Ok(mut q) = state.recorder.items.lock() {
                q.clear();
            }
            return Ok(json_response(StatusCode::OK, &json!({"cleared": true})));
        }
        (&Method::GET, "/_mock/health") => {
            return Ok(json_response(StatusCode::OK, &json!({"ok": true})))
        }
        _ => {}
    }

    let latency =
        header_num(h, "x-mock-latency-ms").map_or(state.opts.latency, Duration::from_millis);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    if let Some(key) = &state.opts.require_key {
        if !has_key(h, key) {
            return Ok(error(api, 401, "Incorrect API key provided."));
        }
    }
    let injected = header_num(h, "x-mock-status")
        .and_then(|s| u16::try_from(s).ok())
        .or_else(|| {
            state
                .opts
                .fail_every
                .filter(|k| *k > 0 && n % k == 0)
                .map(|_| state.opts.fail_status)
        });
    if let Some(status) = injected {
        if status >= 400 {
            let mut r = error(api, status, "Injected failure from llm-sidecar-mock.");
            if let Some(v) = h.get("x-mock-retry-after") {
                r.headers_mut().insert(http::header::RETRY_AFTER, v.clone());
            }
            return Ok(r);
        }
    }

    let chunks = header_num(h, "x-mock-chunks").map_or(state.opts.chunks, |c| c as usize);
    let interval =
        header_num(h, "x-mock-interval-ms").map_or(state.opts.interval, Duration::from_millis);
    let stall_after = header_num(h, "x-mock-stall-after").map(|s| s as usize);
    let echo = h.contains_key("x-mock-echo");
    let ascii = h.contains_key("x-mock-ascii");

    let resp = match (&parts.method, route.as_str()) {
        (&Method::POST, r) if r.ends_with("/chat/completions") => {
            let Ok(req) = serde_json::from_slice::<Value>(&body) else {
                return Ok(error(
                    api,
                    400,
                    "We could not parse the JSON body of your request.",
                ));
            };
            if let Err(msg) = check_chat(&req) {
                return Ok(error(api, 400, &msg));
            }
            let echo = echo.then(|| last_user_text(&req));
            let calls = tool_calls_wanted(h, &req);
            if calls > 0 {
                return Ok(chat_tools(&req, n, calls, interval));
            }
            chat(&req, n, chunks, interval, stall_after, echo, ascii)
        }
        (&Method::POST, r) if r.ends_with("/messages") => {
            let Ok(req) = serde_json::from_slice::<Value>(&body) else {
                return Ok(error(api, 400, "messages: invalid JSON body"));
            };
            if let Err(msg) = check_messages(&req) {
                return Ok(error(api, 400, &msg));
            }
            let calls = tool_calls_wanted(h, &req);
            if calls > 0 {
                return Ok(messages_tools(&req, n, calls, interval));
            }
            messages(&req, n, chunks, interval, stall_after)
        }
        (&Method::POST, r) if r.ends_with("/embeddings") => {
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let tokens = estimate_tokens(&req["input"]);
            json_response(
                StatusCode::OK,
                &json!({
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.0125, -0.0311, 0.0042, 0.0187]}],
                    "model": req["model"].as_str().unwrap_or("text-embedding-3-small"),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
                }),
            )
        }
        (&Method::POST, r) if r.starts_with("/model/") => {
            let t = bedrock::Turn {
                n,
                chunks,
                interval,
                stall_after,
                calls: header_num(h, "x-mock-tool-calls"),
            };
            bedrock::answer(r, &body, &t)
        }
        (&Method::POST, r) if r.contains("/publishers/google/models/") => {
            let t = bedrock::Turn {
                n,
                chunks,
                interval,
                stall_after,
                calls: header_num(h, "x-mock-tool-calls"),
            };
            gemini::answer(r, &body, &t)
        }
        (&Method::GET, r) if r.ends_with("/models") => json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [
                {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
                {"id": "mock-model", "object": "model", "created": 1721172741, "owned_by": "llm-sidecar-mock"}
            ]}),
        ),
        _ => error(
            api,
            404,
            &format!("Unknown request URL: {} {}.", parts.method, route),
        ),
    };
    Ok(resp)
}

fn has_key(h: &HeaderMap, key: &str) -> bool {
    let bearer = h
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|v| v == key);
    let x = h.get("x-api-key").is_some_and(|v| v == key);
    let azure = h.get("api-key").is_some_and(|v| v == key);
    bearer || x || azure
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    json_text_response(status, v.to_string())
}

fn json_text_response(status: StatusCode, text: String) -> Response<Body> {
    let body = Bytes::from(text);
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(api: Api, status: u16, message: &str) -> Response<Body> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let v = match api {
        Api::OpenAi => {
            let (ty, c) = match status {
                401 => ("invalid_request_error", "invalid_api_key"),
                404 => ("invalid_request_error", "unknown_url"),
                429 => ("requests", "rate_limit_exceeded"),
                400..=499 => ("invalid_request_error", "invalid_request"),
                _ => ("server_error", "server_error"),
            };
            json!({"error": {"message": message, "type": ty, "param": null, "code": c}})
        }
        Api::Anthropic => {
            let ty = match status {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": ty, "message": message}})
        }
    };
    let mut r = json_response(code, &v);
    if status == 429 || status == 503 || status == 529 {
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    r
}

/// A rough token count for prompts: about four characters per token.
fn estimate_tokens(v: &Value) -> u64 {
    fn chars(v: &Value) -> usize {
        match v {
            Value::String(s) => s.chars().count(),
            Value::Array(a) => a.iter().map(chars).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "content" | "text" | "input" | "system"))
                .map(|(_, v)| chars(v))
                .sum(),
            _ => 0,
        }
    }
    (chars(v) as u64).div_ceil(4).max(1)
}

const WORDS: &[&str] = &[
    "This",
    "is",
    "a",
    "mock",
    "response",
    "from",
    "llm-sidecar-mock,",
    "streamed",
    "one",
    "token",
    "at",
    "a",
    "time.",
];

fn word(i: usize) -> String {
    format!(
        "{}{}",
        if i == 0 { "" } else { " " },
        WORDS[i % WORDS.len()]
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Content tokens to produce, capped by the request's max_tokens.
fn token_budget(req: &Value, chunks: usize) -> (usize, bool) {
    let cap = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| req[k].as_u64())
        .map(|m| m as usize);
    match cap {
        Some(c) if c < chunks => (c, true),
        _ => (chunks, false),
    }
}

fn sse_response(
    events: Vec<Bytes>,
    interval: Duration,
    stall_after: Option<usize>,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for (i, ev) in events.into_iter().enumerate() {
            if stall_after.is_some_and(|s| i >= s) {
                // Hold the stream open without sending: a stalled provider.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if tx.send(Ok(Frame::data(ev))).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream_from(rx);
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    r
}

fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn data_event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// JSON text with every non-ASCII character written as `\uXXXX` (a surrogate pair
/// above U+FFFF), as Python's `json.dumps` writes it by default.
pub fn ascii_json(v: &Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

fn named_event(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

/// The last user message's text (`x-mock-echo`: the answer repeats it first).
fn last_user_text(req: &Value) -> String {
    req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn chat(
    req: &Value,
    n: u64,
    chunks: usize,
    interval: Duration,
    stall_after: Option<usize>,
    echo: Option<String>,
    ascii: bool,
) -> Response<Body> {
    let text = |v: &Value| if ascii { ascii_json(v) } else { v.to_string() };
    let model = req["model"].as_str().unwrap_or("mock-model").to_string();
    let prompt = estimate_tokens(&req["messages"]);
    let (tokens, truncated) = token_budget(req, chunks);
    let finish = if truncated { "length" } else { "stop" };
    let id = format!("chatcmpl-mock{n}");
    let created = now_secs();
    let usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": tokens,
        "total_tokens": prompt + tokens as u64,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    });
    if req["stream"].as_bool() != Some(true) {
        let content: String = echo.into_iter().chain((0..tokens).map(word)).collect();
        return json_text_response(
            StatusCode::OK,
            text(&json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null}, "logprobs": null, "finish_reason": finish}],
                "usage": usage, "service_tier": "default", "system_fingerprint": "fp_mock"
            })),
        );
    }
    let include_usage = req["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        Bytes::from(format!("data: {}\n\n", text(&c)))
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    if let Some(e) = echo {
        events.push(chunk(json!({ "content": e }), Value::Null));
    }
    for i in 0..tokens {
        events.push(chunk(json!({"content": word(i)}), Value::Null));
    }
    events.push(chunk(json!({}), json!(finish)));
    if include_usage {
        events.push(data_event(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock", "choices": [], "usage": usage
        })));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(events, interval, stall_after)
}

fn messages(
    req: &Value,
    n: u64,
    chunks: usize,
    interval: Duration,
    stall_after: Option<usize>,
) -> Response<Body> {
    let model = req["model"].as_str().unwrap_or("claude-mock").to_string();
    let input = estimate_tokens(&req["messages"]) + req.get("system").map_or(0, estimate_tokens);
    let (tokens, truncated) = token_budget(req, chunks);
    let stop = if truncated { "max_tokens" } else { "end_turn" };
    let id = format!("msg_mock{n}");
    if req["stream"].as_bool() != Some(true) {
        let text: String = (0..tokens).map(word).collect();
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": stop, "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
            }),
        );
    }
    let mut events = vec![
        named_event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
            }}),
        ),
        named_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        named_event("ping", &json!({"type": "ping"})),
    ];
    for i in 0..tokens {
        events.push(named_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word(i)}}),
        ));
    }
    events.push(named_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(named_event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": tokens}}),
    ));
    events.push(named_event(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    sse_response(events, interval, stall_after)
}

/// Tool calls to answer with: `x-mock-tool-calls: N` when the request offers tools (and
/// does not forbid them), 1 when its tool choice forces one; parallel use off caps it
/// at 1.
fn tool_calls_wanted(h: &HeaderMap, req: &Value) -> usize {
    let tools = req["tools"].as_array().map_or(0, Vec::len);
    if tools == 0 {
        return 0;
    }
    let choice = &req["tool_choice"];
    let none = choice == "none" || choice["type"] == "none";
    if none {
        return 0;
    }
    let forced = choice == "required"
        || choice["type"] == "any"
        || choice["type"] == "tool"
        || choice["type"] == "function";
    let n = header_num(h, "x-mock-tool-calls").map_or(usize::from(forced), |n| n as usize);
    let serial = req["parallel_tool_calls"] == false || choice["disable_parallel_tool_use"] == true;
    if serial {
        n.min(1)
    } else {
        n
    }
}

/// The `i`th call: the tools in turn (a forced one always), arguments made from the
/// schema's properties (`{}` for a tool that takes none).
fn mock_call(req: &Value, i: usize) -> (String, Value) {
    let tools = req["tools"].as_array().cloned().unwrap_or_default();
    let forced = req["tool_choice"]["name"]
        .as_str()
        .or_else(|| req["tool_choice"]["function"]["name"].as_str());
    let tool = forced
        .and_then(|f| {
            tools
                .iter()
                .find(|t| t["name"] == f || t["function"]["name"] == f)
        })
        .unwrap_or(&tools[i % tools.len()]);
    let (name, schema) = if tool["function"].is_object() {
        (
            tool["function"]["name"].as_str().unwrap_or("tool"),
            &tool["function"]["parameters"],
        )
    } else {
        (
            tool["name"].as_str().unwrap_or("tool"),
            &tool["input_schema"],
        )
    };
    let mut args = serde_json::Map::new();
    if let Some(props) = schema["properties"].as_object() {
        for k in props.keys() {
            args.insert(k.clone(), format!("mock-{k}-{i}").into());
        }
    }
    (name.to_string(), Value::Object(args))
}

/// `text` cut in two near its middle (on a character boundary): streamed tool arguments
/// arrive split inside a string, as providers send them.
fn halves(text: &str) -> [&str; 2] {
    let cut = (0..=text.len() / 2)
        .rev()
        .find(|c| text.is_char_boundary(*c))
        .unwrap_or(0);
    [&text[..cut], &text[cut..]]
}

fn messages_tools(req: &Value, n: u64, calls: usize, interval: Duration) -> Response<Body> {
    let model = req["model"].as_str().unwrap_or("claude-mock").to_string();
    let input = estimate_tokens(&req["messages"]);
    let id = format!("msg_mock{n}");
    let list: Vec<(String, Value)> = (0..calls).map(|i| mock_call(req, i)).collect();
    if req["stream"].as_bool() != Some(true) {
        let mut content = vec![json!({"type": "text", "text": "Let me check."})];
        for (i, (name, args)) in list.iter().enumerate() {
            content.push(json!({"type": "tool_use", "id": format!("toolu_mock{n}_{i}"), "name": name, "input": args}));
        }
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": 10 + calls, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
            }),
        );
    }
    let mut events = vec![
        named_event(
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
        ),
        named_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        named_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}}),
        ),
        named_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
    ];
    for (i, (name, args)) in list.iter().enumerate() {
        let b = i + 1;
        events.push(named_event("content_block_start", &json!({"type": "content_block_start", "index": b, "content_block": {"type": "tool_use", "id": format!("toolu_mock{n}_{i}"), "name": name, "input": {}}})));
        let text = args.to_string();
        if args.as_object().is_some_and(|a| !a.is_empty()) {
            // Arguments arrive in pieces, split inside a string, as Anthropic sends them.
            for part in halves(&text) {
                events.push(named_event("content_block_delta", &json!({"type": "content_block_delta", "index": b, "delta": {"type": "input_json_delta", "partial_json": part}})));
            }
        }
        events.push(named_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": b}),
        ));
    }
    events.push(named_event("message_delta", &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 10 + calls}})));
    events.push(named_event(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    sse_response(events, interval, None)
}

fn chat_tools(req: &Value, n: u64, calls: usize, interval: Duration) -> Response<Body> {
    let model = req["model"].as_str().unwrap_or("mock-model").to_string();
    let prompt = estimate_tokens(&req["messages"]);
    let id = format!("chatcmpl-mock{n}");
    let list: Vec<(String, Value)> = (0..calls).map(|i| mock_call(req, i)).collect();
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": 10 + calls, "total_tokens": prompt + 10 + calls as u64});
    if req["stream"].as_bool() != Some(true) {
        let tc: Vec<Value> = list.iter().enumerate().map(|(i, (name, args))| json!({"id": format!("call_mock{n}_{i}"), "type": "function", "function": {"name": name, "arguments": args.to_string()}})).collect();
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id, "object": "chat.completion", "created": now_secs(), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": tc, "refusal": null}, "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": usage
            }),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        data_event(
            &json!({"id": id, "object": "chat.completion.chunk", "created": now_secs(), "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]}),
        )
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": null}),
        Value::Null,
    )];
    for (i, (name, args)) in list.iter().enumerate() {
        events.push(chunk(json!({"tool_calls": [{"index": i, "id": format!("call_mock{n}_{i}"), "type": "function", "function": {"name": name, "arguments": ""}}]}), Value::Null));
        let text = args.to_string();
        for part in halves(&text) {
            events.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                Value::Null,
            ));
        }
    }
    events.push(chunk(json!({}), json!("tool_calls")));
    if req["stream_options"]["include_usage"] == true {
        events.push(data_event(&json!({"id": id, "object": "chat.completion.chunk", "created": now_secs(), "model": model, "choices": [], "usage": usage})));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(events, interval, None)
}

/// Checks an Anthropic Messages request against the documented schema, as the API does:
/// the error names the first field that is wrong.
pub fn check_messages(req: &Value) -> Result<(), String> {
    const TOP: &[&str] = &[
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
    ];
    let Some(o) = req.as_object() else {
        return Err("body: Input should be an object".into());
    };
    if let Some(k) = o.keys().find(|k| !TOP.contains(&k.as_str())) {
        return Err(format!("{k}: Extra inputs are not permitted"));
    }
    if !req["model"].is_string() {
        return Err("model: Field required".into());
    }
    if req["max_tokens"].as_u64().is_none_or(|m| m < 1) {
        return Err("max_tokens: Field required (an integer of at least 1)".into());
    }
    if let Some(t) = req.get("temperature") {
        if !t.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t)) {
            return Err("temperature: Input should be less than or equal to 1".into());
        }
    }
    if let Some(s) = req.get("stop_sequences") {
        if !s.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
            return Err("stop_sequences: Input should be a list of strings".into());
        }
    }
    match req.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(b))
            if b.iter()
                .all(|b| b["type"] == "text" && b["text"].is_string()) => {}
        _ => return Err("system: Input should be a string or text blocks".into()),
    }
    let mut tool_names = Vec::new();
    if let Some(tools) = req.get("tools") {
        let Some(tools) = tools.as_array() else {
            return Err("tools: Input should be a list".into());
        };
        for (i, t) in tools.iter().enumerate() {
            if !t["name"].is_string() {
                return Err(format!("tools.{i}.name: Field required"));
            }
            if !t["input_schema"].is_object() || t["input_schema"]["type"] != "object" {
                return Err(format!(
                    "tools.{i}.input_schema: Field required (a JSON schema of type object)"
                ));
            }
            if let Some(k) = t.as_object().and_then(|t| {
                t.keys().find(|k| {
                    ![
                        "name",
                        "description",
                        "input_schema",
                        "cache_control",
                        "type",
                    ]
                    .contains(&k.as_str())
                })
            }) {
                return Err(format!("tools.{i}.{k}: Extra inputs are not permitted"));
            }
            tool_names.push(t["name"].as_str().unwrap_or_default());
        }
    }
    if let Some(c) = req.get("tool_choice") {
        match c["type"].as_str() {
            Some("auto" | "any" | "none") => {}
            Some("tool") if c["name"].as_str().is_some_and(|n| tool_names.contains(&n)) => {}
            _ => return Err("tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none' (or names no declared tool)".into()),
        }
    }
    let Some(msgs) = req["messages"].as_array().filter(|m| !m.is_empty()) else {
        return Err("messages: Field required (a non-empty list)".into());
    };
    let mut last_role = "";
    let mut pending_tools: Vec<String> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        if i == 0 && role != "user" {
            return Err("messages: the first message must use the \"user\" role".into());
        }
        if role == last_role {
            return Err(format!("messages: roles must alternate between \"user\" and \"assistant\", but found multiple \"{role}\" roles in a row"));
        }
        last_role = role;
        let blocks: Vec<Value> = match &m["content"] {
            Value::String(_) => {
                pending_tools.clear();
                continue;
            }
            Value::Array(b) if !b.is_empty() => b.clone(),
            _ => {
                return Err(format!(
                    "messages.{i}.content: Input should be a string or a non-empty list of blocks"
                ))
            }
        };
        let mut seen_other = false;
        let mut answered = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            match (role, b["type"].as_str()) {
                (_, Some("text")) => {
                    if !b["text"].is_string() {
                        return Err(format!("{at}.text: Field required"));
                    }
                    seen_other = true;
                }
                ("user", Some("image")) => {
                    let src = &b["source"];
                    match src["type"].as_str() {
                        Some("base64") => {
                            if !["image/jpeg", "image/png", "image/gif", "image/webp"]
                                .contains(&src["media_type"].as_str().unwrap_or(""))
                            {
                                return Err(format!("{at}.source.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"));
                            }
                            use base64::Engine;
                            if base64::engine::general_purpose::STANDARD
                                .decode(src["data"].as_str().unwrap_or("!"))
                                .is_err()
                            {
                                return Err(format!("{at}.source.data: invalid base64 data"));
                            }
                        }
                        Some("url")
                            if src["url"].as_str().is_some_and(|u| u.starts_with("http")) => {}
                        _ => {
                            return Err(format!(
                                "{at}.source: Input tag does not match 'base64' or 'url'"
                            ))
                        }
                    }
                    seen_other = true;
                }
                ("user", Some("tool_result")) => {
                    if seen_other {
                        return Err(format!("{at}: tool_result blocks must come before any other content in a user message"));
                    }
                    let id = b["tool_use_id"].as_str().unwrap_or("");
                    if !pending_tools.iter().any(|p| p == id) {
                        return Err(format!("{at}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."));
                    }
                    answered.push(id.to_string());
                }
                ("assistant", Some("tool_use")) => {
                    if !b["id"].is_string() || !b["name"].is_string() || !b["input"].is_object() {
                        return Err(format!(
                            "{at}: a tool_use block needs id, name and an input object"
                        ));
                    }
                }
                ("assistant", Some("thinking")) => {
                    if !b["signature"].is_string() {
                        return Err(format!("{at}.signature: Field required"));
                    }
                }
                ("assistant", Some("redacted_thinking")) => {}
                (_, t) => {
                    return Err(format!(
                        "{at}.type: \"{}\" is not allowed in a {role} message",
                        t.unwrap_or("?")
                    ))
                }
            }
        }
        if role == "user" {
            if let Some(missing) = pending_tools.iter().find(|p| !answered.contains(p)) {
                return Err(format!("messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {missing}"));
            }
            pending_tools.clear();
        } else {
            pending_tools = blocks
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .filter_map(|b| b["id"].as_str().map(str::to_string))
                .collect();
        }
    }
    if !pending_tools.is_empty() && last_role == "assistant" {
        // a prefill ending in tool use has no answer yet: the API refuses it
        return Err(
            "messages: the last assistant message has tool_use blocks without results".into(),
        );
    }
    Ok(())
}

/// Checks an OpenAI Chat Completions request: roles, content parts, and that every tool
/// message answers a call of the assistant message before it.
pub fn check_chat(req: &Value) -> Result<(), String> {
    let Some(msgs) = req["messages"].as_array() else {
        return Err("Missing required parameter: 'messages'.".into());
    };
    if !req["model"].is_string() {
        return Err("Missing required parameter: 'model'.".into());
    }
    let mut calls: Vec<String> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        match m["role"].as_str() {
            Some("system" | "developer" | "user") => {
                calls.clear();
                if let Some(parts) = m["content"].as_array() {
                    for (j, p) in parts.iter().enumerate() {
                        match p["type"].as_str() {
                            Some("text") if p["text"].is_string() => {}
                            Some("image_url")
                                if p["image_url"]["url"].as_str().is_some_and(|u| {
                                    u.starts_with("data:image/") || u.starts_with("http")
                                }) => {}
                            _ => {
                                return Err(format!(
                                    "Invalid value for 'messages[{i}].content[{j}]'."
                                ))
                            }
                        }
                    }
                } else if !m["content"].is_string() {
                    return Err(format!("Invalid type for 'messages[{i}].content'."));
                }
            }
            Some("assistant") => {
                calls = m["tool_calls"]
                    .as_array()
                    .map(|c| {
                        c.iter()
                            .filter_map(|c| c["id"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(c) = m["tool_calls"].as_array() {
                    if c.iter().any(|c| !c["function"]["arguments"].is_string()) {
                        return Err(format!("Invalid type for 'messages[{i}].tool_calls[].function.arguments': expected a string."));
                    }
                }
            }
            Some("tool") => {
                let id = m["tool_call_id"].as_str().unwrap_or("");
                if !calls.iter().any(|c| c == id) {
                    return Err(format!("Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls' (messages[{i}])."));
                }
            }
            _ => return Err(format!("Invalid value for 'messages[{i}].role'.")),
        }
    }
    if let Some(t) = req.get("tools") {
        if !t.as_array().is_some_and(|t| {
            t.iter()
                .all(|t| t["type"] == "function" && t["function"]["name"].is_string())
        }) {
            return Err("Invalid 'tools': each needs type function and function.name.".into());
        }
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One message in AWS event-stream framing: prelude (total length, headers length, CRC),
/// headers (`:event-type`, `:content-type`, `:message-type`), JSON payload, message CRC.
pub fn event_stream_message(event_type: &str, payload: &Value) -> Bytes {
    let payload = payload.to_string().into_bytes();
    let mut headers = Vec::new();
    for (name, value) in [
        (":event-type", event_type),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ] {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.push(7); // string
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let total = 12 + headers.len() + payload.len() + 4;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_be_bytes());
    msg.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&msg);
    msg.extend_from_slice(&prelude_crc.to_be_bytes());
    msg.extend_from_slice(&headers);
    msg.extend_from_slice(&payload);
    let crc = crc32fast::hash(&msg);
    msg.extend_from_slice(&crc.to_be_bytes());
    Bytes::from(msg)
}

fn event_stream_response(
    events: Vec<Bytes>,
    interval: Duration,
    stall_after: Option<usize>,
) -> Response<Body> {
    let mut r = sse_response(events, interval, stall_after);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    r.headers_mut().remove(http::header::CACHE_CONTROL);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_framing() {
        let m = event_stream_message("messageStop", &json!({"stopReason": "end_turn"}));
        let total = u32::from_be_bytes(m[0..4].try_into().unwrap()) as usize;
        assert_eq!(total, m.len());
        assert_eq!(
            u32::from_be_bytes(m[8..12].try_into().unwrap()),
            crc32fast::hash(&m[0..8])
        );
        assert_eq!(
            u32::from_be_bytes(m[total - 4..].try_into().unwrap()),
            crc32fast::hash(&m[..total - 4])
        );
        assert_eq!(
            percent_decode("anthropic.claude-v1%3A0"),
            "anthropic.claude-v1:0"
        );
    }

    #[test]
    fn token_estimates_and_budgets() {
        assert_eq!(
            estimate_tokens(&json!([{"role": "user", "content": "12345678"}])),
            2
        );
        assert_eq!(token_budget(&json!({"max_tokens": 3}), 8), (3, true));
        assert_eq!(token_budget(&json!({}), 8), (8, false));
    }
}

//! Translation between LLM API shapes: a route whose clients speak one API (its *front*)
//! can send each attempt to a provider that speaks another (its *target*), and the
//! answer comes back in the front's shape, JSON and streams alike.
//!
//! ```text
//!  front (client)           target (provider)          files
//!  OpenAI Chat  ──request──► Anthropic Messages        anthropic.rs  (chat → messages,
//!               ◄─response──                                          messages → chat,
//!               ◄─SSE───────                                          SSE state machine)
//!  Anthropic    ──request──► OpenAI Chat (and every    openai.rs     (messages → chat,
//!  Messages     ◄─response──  OpenAI-compatible kind)                 chat → messages,
//!               ◄─SSE───────                                          SSE state machine)
//! ```
//!
//! A request is translated once per target, from memory (the exchange holds the whole
//! body); a response is translated as it passes: a JSON body is read whole (bounded by
//! [`JSON_LIMIT`]) and rewritten, a stream event by event with its state (tool-call
//! indexes, open content blocks, usage) kept between network chunks. Nothing is
//! invented: an upstream answer that cannot be translated is an [`Error`], which the
//! proxy turns into a 502 in the front's error shape (`x-llm-sidecar-error:
//! translation`), or, once a stream has started, into the front's error event.
//!
//! This part is a leaf: it knows JSON and SSE, not the proxy.

mod anthropic;
mod bedrock;
mod eventstream;
mod gemini;
#[cfg(test)]
mod golden;
mod hub;
mod openai;
mod responses;
pub mod sse;
#[cfg(test)]
mod tests;

use serde_json::Value;

/// The most of a JSON body (request or response) translated in memory.
pub const JSON_LIMIT: usize = 16 << 20;

/// An API shape: what a route's clients speak, or what a provider speaks natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI Chat Completions (`/chat/completions`), also spoken by Azure OpenAI,
    /// DeepSeek, DashScope, Ark, Ollama and any OpenAI-compatible server.
    OpenAiChat,
    /// Anthropic Messages (`/v1/messages`).
    AnthropicMessages,
    /// Amazon Bedrock Converse (`/model/{id}/converse`, `/converse-stream`); a target
    /// only.
    BedrockConverse,
    /// Gemini on Vertex AI (`…/models/{id}:generateContent`, `:streamGenerateContent`);
    /// a target only.
    Gemini,
    /// OpenAI Responses (`/responses`): a front only, on a route whose clients speak
    /// OpenAI (`api: openai`); told as Chat Completions to targets without it.
    OpenAiResponses,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai_chat",
            Api::AnthropicMessages => "anthropic_messages",
            Api::BedrockConverse => "bedrock_converse",
            Api::Gemini => "gemini",
            Api::OpenAiResponses => "openai_responses",
        }
    }

    /// Clients may speak it (a route's `api`).
    pub fn is_front(self) -> bool {
        matches!(
            self,
            Api::OpenAiChat | Api::AnthropicMessages | Api::OpenAiResponses
        )
    }

    /// The endpoint's path depends on the model and on streaming (Bedrock, Gemini).
    pub fn path_has_model(self) -> bool {
        matches!(self, Api::BedrockConverse | Api::Gemini)
    }

    /// The path and query of a model's endpoint under `base` (a base path without a
    /// trailing slash), for the APIs whose path names the model.
    pub fn model_path(self, base: &str, model: &str, stream: bool) -> String {
        let m = path_segment(model);
        match (self, stream) {
            (Api::BedrockConverse, false) => format!("{base}/model/{m}/converse"),
            (Api::BedrockConverse, true) => format!("{base}/model/{m}/converse-stream"),
            (Api::Gemini, false) => format!("{base}/publishers/google/models/{m}:generateContent"),
            (Api::Gemini, true) => {
                format!("{base}/publishers/google/models/{m}:streamGenerateContent?alt=sse")
            }
            _ => base.to_string(),
        }
    }
}

/// `s` as one path segment: every byte but unreserved ones percent-encoded (a Bedrock
/// model id or ARN holds `:` and `/`).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a body could not be translated. The message is client-safe: it names the field
/// and the problem, never a secret (bodies carry none; credentials are in headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub message: String,
}

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Settings of one front → target translation, fixed at config load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Anthropic requires `max_tokens`; a request without one gets this.
    pub default_max_tokens: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            default_max_tokens: 4096,
        }
    }
}

/// A translated request, and what its response's translation needs to know.
#[derive(Debug)]
pub struct Request {
    pub body: Vec<u8>,
    pub stream: bool,
    pub reply: ReplySpec,
    /// The target's model (for the APIs whose path names it).
    pub model: String,
}

/// What the response translator needs from the request.
#[derive(Clone, Debug, Default)]
pub struct ReplySpec {
    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The model the client asked for: a response that names none gets this.
    pub model: String,
}

/// Translates a request body from `front` to `target`, with `model` (the target's model,
/// after the route's model map) written in.
pub fn request(
    front: Api,
    target: Api,
    body: &[u8],
    model: Option<&str>,
    opts: &Options,
) -> Result<Request> {
    if body.len() > JSON_LIMIT {
        return Err(Error::new(format!(
            "the request body is larger than the {} MiB the sidecar translates",
            JSON_LIMIT >> 20
        )));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Error::new(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(req) = v else {
        return Err(Error::new("the request body must be a JSON object"));
    };
    request_map(front, target, req, model, opts)
}

fn request_map(
    front: Api,
    target: Api,
    req: serde_json::Map<String, Value>,
    model: Option<&str>,
    opts: &Options,
) -> Result<Request> {
    let out = match (front, target) {
        (Api::OpenAiResponses, Api::OpenAiChat) => {
            let mut chat = responses::to_chat(req)?;
            if let Some(m) = model {
                chat.insert("model".into(), m.into());
            }
            let model = match chat.get("model").and_then(Value::as_str) {
                Some(m) => m.to_string(),
                None => return Err(Error::new("`model` is required")),
            };
            let stream = chat.get("stream").and_then(Value::as_bool) == Some(true);
            Request {
                body: serde_json::to_vec(&Value::Object(chat))
                    .map_err(|e| Error::new(format!("writing the request: {e}")))?,
                stream,
                reply: ReplySpec {
                    include_usage: stream,
                    model: model.clone(),
                },
                model,
            }
        }
        (Api::OpenAiResponses, t) => {
            request_map(Api::OpenAiChat, t, responses::to_chat(req)?, model, opts)?
        }
        (Api::OpenAiChat, Api::AnthropicMessages) => anthropic::request(req, model, opts)?,
        (Api::AnthropicMessages, Api::OpenAiChat) => openai::request(req, model)?,
        (f, Api::BedrockConverse) if f.is_front() => bedrock::request(f, req, model, opts)?,
        (f, Api::Gemini) if f.is_front() => gemini::request(f, req, model, opts)?,
        (a, b) if a == b => {
            return Err(Error::new(
                "no translation is needed between one API and itself",
            ))
        }
        (a, b) => {
            return Err(Error::new(format!(
                "no translation from {} to {}",
                a.as_str(),
                b.as_str()
            )))
        }
    };
    Ok(out)
}

/// Translates one response body as it passes, piece by piece.
pub struct Reply {
    kind: ReplyKind,
    front: Api,
    /// The client's content type for this answer.
    content_type: &'static str,
}

enum ReplyKind {
    /// A whole JSON document (an answer or an error), rewritten at its end.
    Json {
        buf: Vec<u8>,
        front: Api,
        target: Api,
        status: u16,
        spec: ReplySpec,
    },
    /// An Anthropic stream told as OpenAI chunks.
    AnthropicToChat(Box<anthropic::ChatStream>),
    /// An OpenAI stream told as Anthropic events.
    ChatToAnthropic(Box<openai::MessagesStream>),
    /// A ConverseStream told as the front's stream.
    Bedrock(Box<bedrock::Stream>),
    /// A Gemini stream told as the front's stream.
    Gemini(Box<gemini::Stream>),
    /// A Responses client: the answer as Chat (translated by `inner` when the target
    /// speaks another API), then as a Response.
    Responses {
        inner: Option<Box<Reply>>,
        /// The answer streams: Chat chunks to Responses events.
        stream: Option<Box<responses::Stream>>,
        buf: Vec<u8>,
        status: u16,
    },
}

impl Reply {
    /// The translator for a response with this status and `content-type`.
    pub fn new(front: Api, target: Api, status: u16, content_type: &str, spec: ReplySpec) -> Reply {
        let ok = status < 300;
        if front == Api::OpenAiResponses {
            let inner = (target != Api::OpenAiChat).then(|| {
                Box::new(Reply::new(
                    Api::OpenAiChat,
                    target,
                    status,
                    content_type,
                    spec,
                ))
            });
            let streams = match &inner {
                Some(i) => i.is_stream(),
                None => ok && is_content_type(content_type, "text/event-stream"),
            };
            return Reply {
                front,
                content_type: if streams {
                    "text/event-stream; charset=utf-8"
                } else {
                    "application/json"
                },
                kind: ReplyKind::Responses {
                    inner,
                    stream: streams.then(Box::default),
                    buf: Vec::new(),
                    status,
                },
            };
        }
        if ok
            && target == Api::BedrockConverse
            && is_content_type(content_type, "application/vnd.amazon.eventstream")
        {
            return Reply {
                front,
                content_type: "text/event-stream; charset=utf-8",
                kind: ReplyKind::Bedrock(Box::new(bedrock::Stream::new(front, spec))),
            };
        }
        let sse = ok && is_content_type(content_type, "text/event-stream");
        let kind = match (sse, front, target) {
            (true, _, Api::Gemini) => ReplyKind::Gemini(Box::new(gemini::Stream::new(front, spec))),
            (true, Api::OpenAiChat, Api::AnthropicMessages) => {
                ReplyKind::AnthropicToChat(Box::new(anthropic::ChatStream::new(spec)))
            }
            (true, Api::AnthropicMessages, Api::OpenAiChat) => {
                ReplyKind::ChatToAnthropic(Box::new(openai::MessagesStream::new(spec)))
            }
            _ => ReplyKind::Json {
                buf: Vec::new(),
                front,
                target,
                status,
                spec,
            },
        };
        Reply {
            front,
            content_type: if sse {
                "text/event-stream; charset=utf-8"
            } else {
                "application/json"
            },
            kind,
        }
    }

    pub fn content_type(&self) -> &'static str {
        self.content_type
    }

    /// The answer is a stream: its pieces go to the client as they are translated.
    pub fn is_stream(&self) -> bool {
        !matches!(self.kind, ReplyKind::Json { .. })
    }

    /// Takes the next piece of the provider's body; appends what the client gets now.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        match &mut self.kind {
            ReplyKind::Json { buf, .. } => {
                if buf.len() + chunk.len() > JSON_LIMIT {
                    return Err(Error::new(format!(
                        "the provider's answer is larger than the {} MiB the sidecar translates",
                        JSON_LIMIT >> 20
                    )));
                }
                buf.extend_from_slice(chunk);
                Ok(())
            }
            ReplyKind::AnthropicToChat(s) => s.feed(chunk, out),
            ReplyKind::ChatToAnthropic(s) => s.feed(chunk, out),
            ReplyKind::Bedrock(s) => s.feed(chunk, out),
            ReplyKind::Gemini(s) => s.feed(chunk, out),
            ReplyKind::Responses {
                inner, stream, buf, ..
            } => match (inner, stream) {
                (Some(i), Some(s)) => {
                    let mut chat = std::mem::take(buf);
                    chat.clear();
                    let r = i.feed(chunk, &mut chat).and_then(|()| s.feed(&chat, out));
                    *buf = chat;
                    r
                }
                (None, Some(s)) => s.feed(chunk, out),
                (Some(i), None) => i.feed(chunk, buf),
                (None, None) => {
                    if buf.len() + chunk.len() > JSON_LIMIT {
                        return Err(Error::new(format!(
                            "the provider's answer is larger than the {} MiB the sidecar translates",
                            JSON_LIMIT >> 20
                        )));
                    }
                    buf.extend_from_slice(chunk);
                    Ok(())
                }
            },
        }
    }

    /// The provider's body ended: appends the rest of the client's answer. A stream that
    /// ended before its last event is an error here, never a made-up ending.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        match &mut self.kind {
            ReplyKind::Json {
                buf,
                front,
                target,
                status,
                spec,
            } => {
                let v = if *status >= 300 {
                    error_body(*front, *target, *status, buf)
                } else {
                    let doc: Value = serde_json::from_slice(buf).map_err(|e| {
                        Error::new(format!("the provider's answer is not valid JSON: {e}"))
                    })?;
                    match (*front, *target) {
                        (Api::OpenAiChat, Api::AnthropicMessages) => {
                            anthropic::response(doc, spec)?
                        }
                        (Api::AnthropicMessages, Api::OpenAiChat) => openai::response(doc, spec)?,
                        (f, Api::BedrockConverse) => bedrock::response(f, doc, spec)?,
                        (f, Api::Gemini) => gemini::response(f, doc, spec)?,
                        _ => doc,
                    }
                };
                serde_json::to_writer(&mut *out, &v)
                    .map_err(|e| Error::new(format!("writing the answer: {e}")))
            }
            ReplyKind::AnthropicToChat(s) => s.finish(out),
            ReplyKind::ChatToAnthropic(s) => s.finish(out),
            ReplyKind::Bedrock(s) => s.finish(out),
            ReplyKind::Gemini(s) => s.finish(out),
            ReplyKind::Responses {
                inner,
                stream,
                buf,
                status,
            } => {
                if let Some(i) = inner {
                    if stream.is_some() {
                        buf.clear();
                    }
                    i.finish(buf)?;
                }
                match stream {
                    Some(s) => s.feed(buf, out).and_then(|()| s.finish(out)),
                    // An error is already in OpenAI's shape, which Responses shares.
                    None if *status >= 300 => {
                        out.extend_from_slice(buf);
                        Ok(())
                    }
                    None => {
                        let doc: Value = serde_json::from_slice(buf).map_err(|e| {
                            Error::new(format!("the provider's answer is not valid JSON: {e}"))
                        })?;
                        let r = responses::from_chat(doc)?;
                        serde_json::to_writer(&mut *out, &r)
                            .map_err(|e| Error::new(format!("writing the answer: {e}")))
                    }
                }
            }
        }
    }

    /// The client's stream is cut by `err` after it started: the front's error event.
    pub fn error_event(&self, err: &Error, out: &mut Vec<u8>) {
        match (&self.kind, self.front) {
            (ReplyKind::Json { .. }, _) => {}
            (ReplyKind::Responses { stream: None, .. }, _) => {}
            (_, Api::OpenAiChat) => sse::openai_error_event(&err.message, out),
            (_, Api::OpenAiResponses) => sse::named(
                "error",
                &serde_json::json!({"type": "error", "code": "translation", "message": err.message, "param": null}),
                out,
            ),
            (_, _) => sse::anthropic_error_event(&err.message, out),
        }
    }
}

/// `content_type` is `prefix` (ASCII case-insensitive), parameters allowed.
pub fn is_content_type(content_type: &str, prefix: &str) -> bool {
    content_type
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// A provider's error body in the front's error shape; the status stays.
fn error_body(front: Api, target: Api, status: u16, body: &[u8]) -> Value {
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    let message = doc
        .as_ref()
        .and_then(|d| {
            d.pointer("/error/message")
                .or_else(|| d.get("message"))
                .or_else(|| d.get("Message"))
                .and_then(Value::as_str)
        })
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
            let text = text.trim();
            if text.is_empty() {
                format!("the provider answered {status}")
            } else {
                text.to_string()
            }
        });
    let message = format!("{} (from {})", message, target.as_str());
    match front {
        Api::OpenAiChat => serde_json::json!({
            "error": {
                "message": message,
                "type": openai_error_type(status),
                "param": null,
                "code": doc.as_ref().and_then(|d| d.pointer("/error/type")).cloned().unwrap_or(Value::Null),
            }
        }),
        _ => serde_json::json!({
            "type": "error",
            "error": {"type": anthropic_error_type(status), "message": message}
        }),
    }
}

/// OpenAI's error `type` for a status.
pub fn openai_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// Anthropic's error `type` for a status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// A token count, tolerant of providers that send numbers as strings or floats.
pub(crate) fn count(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A tool call's `arguments` string as a JSON value: empty means no arguments (`{}`).
pub(crate) fn tool_arguments(args: &str, whose: &str) -> Result<Value> {
    if args.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_str(args)
        .map_err(|e| Error::new(format!("the arguments of {whose} are not JSON: {e}")))
}

/// Seconds since the epoch, for OpenAI's `created`.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

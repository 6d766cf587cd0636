//! Token usage from provider responses, read incrementally as the bytes pass by.
//!
//! The parser sees each response chunk after (never instead of) it is forwarded: it
//! copies what it needs and never delays a byte. Events that span chunk boundaries are
//! reassembled in a small line buffer.
//!
//! | framing (by `content-type`) | where the numbers are |
//! |---|---|
//! | JSON | `usage` (OpenAI chat/completions and responses, Anthropic, DeepSeek, DashScope, Ark, Ollama's OpenAI API, Bedrock Converse) or Ollama's `prompt_eval_count` / `eval_count` |
//! | SSE | the event carrying `usage`: OpenAI's last chunk (`stream_options.include_usage`), `response.completed`'s `response.usage`, Anthropic's `message_start` (input, cache) and `message_delta` (cumulative output) |
//! | NDJSON | Ollama's native stream: the `done` line's counts |
//! | AWS event-stream | Bedrock ConverseStream's `metadata` event |
//!
//! Field names are normalised ([`Usage`]): `input` counts every prompt token, cached ones
//! included (Anthropic and Bedrock report cache reads and writes apart from
//! `input_tokens`; they are added back), `cache_read` / `cache_write` say how many of them
//! hit or filled a prompt cache, `reasoning` how many of `output` were reasoning.
//!
//! A stream cut before its usage event is charged what was seen: the reported numbers if
//! any, and at least one output token per content event.

use serde_json::Value;

/// The most a JSON response body is buffered for its usage.
const JSON_LIMIT: usize = 8 << 20;
/// The longest SSE/NDJSON line kept (longer ones are skipped, not buffered).
const LINE_LIMIT: usize = 4 << 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

impl Usage {
    /// Each count with its metric label: input, output, cache_read, cache_write,
    /// reasoning.
    pub fn by_type(&self) -> [(&'static str, u64); 5] {
        [
            ("input", self.input),
            ("output", self.output),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
            ("reasoning", self.reasoning),
        ]
    }

    /// Field-wise maximum: reports in one response are either partial (Anthropic's
    /// `message_start` then `message_delta`) or cumulative, never additive.
    fn merge(&mut self, o: Usage) {
        self.input = self.input.max(o.input);
        self.output = self.output.max(o.output);
        self.cache_read = self.cache_read.max(o.cache_read);
        self.cache_write = self.cache_write.max(o.cache_write);
        self.reasoning = self.reasoning.max(o.reasoning);
    }
}

fn num(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    cur.as_u64()
}

fn first(v: &Value, paths: &[&[&str]]) -> u64 {
    paths.iter().find_map(|p| num(v, p)).unwrap_or(0)
}

/// Normalises one `usage` object, whatever provider wrote it.
fn from_usage(u: &Value) -> Option<Usage> {
    if !u.is_object() {
        return None;
    }
    let cache_read = first(
        u,
        &[
            &["prompt_tokens_details", "cached_tokens"],
            &["input_tokens_details", "cached_tokens"],
            &["cache_read_input_tokens"],
            &["cacheReadInputTokens"],
            &["prompt_cache_hit_tokens"],
        ],
    );
    let cache_write = first(
        u,
        &[&["cache_creation_input_tokens"], &["cacheWriteInputTokens"]],
    );
    let reported_input = first(
        u,
        &[&["prompt_tokens"], &["input_tokens"], &["inputTokens"]],
    );
    // Anthropic and Bedrock count cache reads and writes outside input_tokens.
    let separate_cache = u.get("cache_read_input_tokens").is_some()
        || u.get("cache_creation_input_tokens").is_some()
        || u.get("cacheReadInputTokens").is_some()
        || u.get("cacheWriteInputTokens").is_some();
    let input = if separate_cache {
        reported_input + cache_read + cache_write
    } else {
        reported_input
    };
    Some(Usage {
        input,
        output: first(
            u,
            &[
                &["completion_tokens"],
                &["output_tokens"],
                &["outputTokens"],
            ],
        ),
        cache_read,
        cache_write,
        reasoning: first(
            u,
            &[
                &["completion_tokens_details", "reasoning_tokens"],
                &["output_tokens_details", "reasoning_tokens"],
            ],
        ),
    })
}

/// The places a document keeps its usage, deserialized without building the rest of
/// the document (unknown fields are skipped, not allocated).
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Doc {
    usage: Option<Value>,
    message: Option<Inner>,
    response: Option<Inner>,
    model: Option<String>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    /// Gemini's usage and model.
    #[serde(rename = "usageMetadata")]
    usage_metadata: Option<Value>,
    #[serde(rename = "modelVersion")]
    model_version: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Inner {
    usage: Option<Value>,
    model: Option<String>,
}

/// The usage in one JSON document (a whole body, or one event): its `usage`,
/// `message.usage` (Anthropic's `message_start`) or `response.usage` (the Responses
/// API's `response.completed`), else Ollama's native counts.
pub fn extract(b: &[u8]) -> Option<Usage> {
    extract_with_model(b).0
}

/// [`extract`], with the model the document names (`model`, `message.model`,
/// `response.model`).
pub fn extract_with_model(b: &[u8]) -> (Option<Usage>, Option<String>) {
    let Ok(mut d) = serde_json::from_slice::<Doc>(b) else {
        return (None, None);
    };
    let model = d
        .model
        .take()
        .or_else(|| d.message.as_mut().and_then(|m| m.model.take()))
        .or_else(|| d.response.as_mut().and_then(|m| m.model.take()))
        .or_else(|| d.model_version.take());
    (usage_of(&d), model)
}

fn usage_of(d: &Doc) -> Option<Usage> {
    for u in [
        d.usage.as_ref(),
        d.message.as_ref().and_then(|m| m.usage.as_ref()),
        d.response.as_ref().and_then(|m| m.usage.as_ref()),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(u) = from_usage(u) {
            return Some(u);
        }
    }
    if let Some(u) = d.usage_metadata.as_ref().filter(|u| u.is_object()) {
        // Gemini: the prompt count includes cached tokens; thoughts are output too.
        let thoughts = first(u, &[&["thoughtsTokenCount"]]);
        return Some(Usage {
            input: first(u, &[&["promptTokenCount"]]),
            output: first(u, &[&["candidatesTokenCount"]]) + thoughts,
            cache_read: first(u, &[&["cachedContentTokenCount"]]),
            cache_write: 0,
            reasoning: thoughts,
        });
    }
    if d.eval_count.is_some() || d.prompt_eval_count.is_some() {
        return Some(Usage {
            input: d.prompt_eval_count.unwrap_or(0),
            output: d.eval_count.unwrap_or(0),
            ..Usage::default()
        });
    }
    None
}

/// What the sidecar reads from a request body, in one pass: the model it asks for and
/// the output it caps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestFields<'a> {
    /// The JSON body's `model`, else Bedrock's path segment after `/model/`.
    pub model: Option<std::borrow::Cow<'a, str>>,
    /// `max_completion_tokens`, else `max_tokens`, else `max_output_tokens`.
    pub max_output: Option<u64>,
}

impl<'a> RequestFields<'a> {
    pub fn parse(path: &'a str, body: &'a [u8]) -> RequestFields<'a> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Probe<'a> {
            #[serde(borrow)]
            model: Option<std::borrow::Cow<'a, str>>,
            max_tokens: Option<u64>,
            max_completion_tokens: Option<u64>,
            max_output_tokens: Option<u64>,
        }
        let p: Probe = if body.trim_ascii_start().first() == Some(&b'{') {
            serde_json::from_slice(body).unwrap_or_default()
        } else {
            Probe::default()
        };
        let model = p.model.or_else(|| {
            let (_, rest) = path.split_once("/model/")?;
            rest.split('/').next().map(std::borrow::Cow::Borrowed)
        });
        RequestFields {
            model,
            max_output: p
                .max_completion_tokens
                .or(p.max_tokens)
                .or(p.max_output_tokens),
        }
    }
}

#[cfg(test)]
#[test]
fn request_fields() {
    let f = RequestFields::parse(
        "/v1/chat/completions",
        br#" {"messages":[],"model":"gpt-4o","max_tokens":9}"#,
    );
    assert_eq!(
        (f.model.as_deref(), f.max_output),
        (Some("gpt-4o"), Some(9))
    );
    let f = RequestFields::parse("/model/anthropic.claude-3-haiku/converse", b"{}");
    assert_eq!(f.model.as_deref(), Some("anthropic.claude-3-haiku"));
    assert_eq!(
        RequestFields::parse("/v1/models", b""),
        RequestFields::default()
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Json,
    Sse,
    NdJson,
    EventStream,
}

/// Follows one response body.
#[derive(Debug)]
pub struct UsageParser {
    framing: Framing,
    buf: Vec<u8>,
    /// A line too long to keep is being skipped up to its end.
    skipping: bool,
    usage: Usage,
    reported: bool,
    /// The model the provider says answered (from the document or event with usage).
    model: Option<String>,
    /// Data events without usage (content deltas, roughly one token or more each).
    events: u64,
    /// Why the model stopped (`finish_reason`, `stop_reason`, `stopReason`), each value
    /// once, at most [`MAX_FINISH_REASONS`].
    finish_reasons: Vec<Box<str>>,
}

/// Finish reasons kept per response (one per choice; `n` > 4 is rare).
pub const MAX_FINISH_REASONS: usize = 4;

/// Adds the finish reasons named in `doc` to `out`: the string values of
/// `finish_reason`, `stop_reason`, `stopReason` and `finishReason` (null and other types
/// are skipped).
/// A byte scan, not a parse: it runs on every event of a stream.
pub fn finish_reasons(doc: &[u8], out: &mut Vec<Box<str>>) {
    const TAIL: &[u8] = b"eason\":";
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&doc[from..], TAIL) {
        let at = from + i;
        from = at + TAIL.len();
        let key_ok = [&b"\"finish_r"[..], b"\"stop_r", b"\"stopR", b"\"finishR"]
            .iter()
            .any(|k| doc[..at].ends_with(k));
        if !key_ok {
            continue;
        }
        let rest = doc[from..].trim_ascii_start();
        let Some(v) = rest.strip_prefix(b"\"") else {
            continue;
        };
        let Some(end) = memchr::memchr(b'"', v) else {
            return;
        };
        let value = &v[..end];
        if value.is_empty() || value.len() > 64 || value.contains(&b'\\') {
            continue;
        }
        if out.len() < MAX_FINISH_REASONS && !out.iter().any(|r| r.as_bytes() == value) {
            if let Ok(s) = std::str::from_utf8(value) {
                out.push(s.into());
            }
        }
    }
}

impl UsageParser {
    /// A parser for a response with this `content-type`, or None when it carries no usage
    /// the sidecar understands.
    pub fn for_content_type(content_type: &str) -> Option<UsageParser> {
        // Runs for every response: compare without allocating a lower-cased copy.
        let is = |prefix: &str| {
            content_type
                .get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        };
        let framing = if is("text/event-stream") {
            Framing::Sse
        } else if is("application/vnd.amazon.eventstream") {
            Framing::EventStream
        } else if is("application/x-ndjson") {
            Framing::NdJson
        } else if is("application/json") {
            Framing::Json
        } else {
            return None;
        };
        Some(UsageParser {
            framing,
            buf: Vec::new(),
            skipping: false,
            usage: Usage::default(),
            reported: false,
            model: None,
            events: 0,
            finish_reasons: Vec::new(),
        })
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self.framing {
            Framing::Json => {
                if self.buf.len() + chunk.len() <= JSON_LIMIT {
                    self.buf.extend_from_slice(chunk);
                } else {
                    self.skipping = true;
                }
            }
            Framing::Sse | Framing::NdJson => self.feed_lines(chunk),
            Framing::EventStream => {
                self.buf.extend_from_slice(chunk);
                self.drain_frames();
            }
        }
    }

    fn feed_lines(&mut self, mut chunk: &[u8]) {
        while let Some(nl) = chunk.iter().position(|b| *b == b'\n') {
            let (line, rest) = chunk.split_at(nl);
            chunk = &rest[1..];
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.buf.is_empty() {
                self.line(line);
            } else {
                self.buf.extend_from_slice(line);
                let whole = std::mem::take(&mut self.buf);
                self.line(&whole);
            }
        }
        if !chunk.is_empty() && !self.skipping {
            if self.buf.len() + chunk.len() > LINE_LIMIT {
                self.buf.clear();
                self.skipping = true;
            } else {
                self.buf.extend_from_slice(chunk);
            }
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let payload = match self.framing {
            Framing::Sse => match line.strip_prefix(b"data:") {
                Some(p) => p.trim_ascii_start(),
                None => return,
            },
            _ => line.trim_ascii(),
        };
        if payload.is_empty() || payload == b"[DONE]" {
            return;
        }
        finish_reasons(payload, &mut self.finish_reasons);
        // Only events that mention usage are parsed; content events are counted.
        if memchr_usage(payload) {
            if let Some(u) = self.take(payload) {
                self.reported = true;
                self.usage.merge(u);
                return;
            }
        }
        if has_content(payload) {
            self.events += 1;
        }
    }

    fn drain_frames(&mut self) {
        // prelude: total length, headers length, prelude CRC; then headers, payload, CRC
        while self.buf.len() >= 12 {
            let total =
                u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
            let headers_len =
                u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
            if total < 16 || headers_len > total - 16 || total > 16 << 20 {
                // Not event-stream after all: stop looking.
                self.buf.clear();
                self.framing = Framing::Json;
                self.skipping = true;
                return;
            }
            if self.buf.len() < total {
                return;
            }
            let frame: Vec<u8> = self.buf.drain(..total).collect();
            let headers = &frame[12..12 + headers_len];
            let payload = &frame[12 + headers_len..total - 4];
            match event_type(headers) {
                Some("metadata") => {
                    if let Some(u) = self.take(payload) {
                        self.reported = true;
                        self.usage.merge(u);
                    }
                }
                Some("contentBlockDelta") | Some("chunk") => self.events += 1,
                Some("messageStop") => finish_reasons(payload, &mut self.finish_reasons),
                _ => {}
            }
        }
    }

    /// The usage once the body ended (`complete`) or was cut: what was reported; with
    /// nothing reported, or for a cut stream, at least one output token per content
    /// event seen.
    pub fn finish(&mut self, complete: bool) -> Usage {
        if self.framing == Framing::Json && !self.skipping {
            finish_reasons(&self.buf, &mut self.finish_reasons);
        }
        if self.framing == Framing::Json
            && !self.skipping
            && !self.buf.is_empty()
            && memchr_usage(&self.buf)
        {
            let buf = std::mem::take(&mut self.buf);
            if let Some(u) = self.take(&buf) {
                self.reported = true;
                self.usage.merge(u);
            }
        }
        let mut u = self.usage;
        if !complete || !self.reported {
            u.output = u.output.max(self.events);
        }
        u
    }

    /// The usage in one document, keeping the first model named.
    fn take(&mut self, doc: &[u8]) -> Option<Usage> {
        let (u, model) = extract_with_model(doc);
        if self.model.is_none() {
            self.model = model;
        }
        u
    }

    /// The body is a stream of events (SSE, AWS event-stream, NDJSON).
    pub fn is_stream(&self) -> bool {
        self.framing != Framing::Json
    }

    /// Why the model stopped, as the response said (`stop`, `length`, `end_turn`, ...).
    pub fn finish_reasons(&self) -> &[Box<str>] {
        &self.finish_reasons
    }

    /// The model the provider named in the response, if it did.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Whether the provider reported usage (false: only an estimate from events).
    pub fn reported(&self) -> bool {
        self.reported
    }
}

fn memchr_usage(b: &[u8]) -> bool {
    // `u` and `e` are rare enough in JSON punctuation that a byte scan for them first,
    // then a compare, beats comparing every 5-byte window.
    let mut i = 0;
    while i + 5 <= b.len() {
        match b[i] {
            b'u' if &b[i..i + 5] == b"usage" => return true,
            b'e' if &b[i..i + 5] == b"eval_" => return true,
            _ => i += 1,
        }
    }
    false
}

/// An event carrying generated text: a non-empty `"content"`, `"text"` or `"delta"`
/// string (OpenAI chunks, Anthropic text deltas, Responses API deltas, Ollama lines).
fn has_content(b: &[u8]) -> bool {
    for key in [&b"\"content\":\""[..], b"\"text\":\"", b"\"delta\":\""] {
        let mut rest = b;
        while let Some(i) = rest.windows(key.len()).position(|w| w == key) {
            let after = &rest[i + key.len()..];
            if after.first().is_some_and(|c| *c != b'"') {
                return true;
            }
            rest = after;
        }
    }
    false
}

/// The `:event-type` header of an AWS event-stream message.
fn event_type(mut h: &[u8]) -> Option<&str> {
    while !h.is_empty() {
        let name_len = *h.first()? as usize;
        let name = h.get(1..1 + name_len)?;
        let ty = *h.get(1 + name_len)?;
        h = &h[2 + name_len..];
        let value_len = match ty {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                let l = u16::from_be_bytes([*h.first()?, *h.get(1)?]) as usize;
                h = &h[2..];
                l
            }
            _ => return None,
        };
        let value = h.get(..value_len)?;
        h = &h[value_len..];
        if name == b":event-type" && ty == 7 {
            return std::str::from_utf8(value).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests;

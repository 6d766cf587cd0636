//! OpenAI Chat Completions clients, Anthropic Messages providers: the request from
//! chat to messages, the answer and its stream from messages to chat.

use super::{count, now_secs, sse, Error, Options, ReplySpec, Request, Result};
use serde_json::{json, Map, Value};

/// OpenAI's temperature runs 0–2, Anthropic's 0–1.
const MAX_TEMPERATURE: f64 = 1.0;

/// `reasoning_effort` → thinking budget (tokens).
fn thinking_budget(effort: &str) -> Option<u64> {
    match effort {
        "minimal" | "low" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16384),
        _ => None,
    }
}

pub fn request(req: Map<String, Value>, model: Option<&str>, opts: &Options) -> Result<Request> {
    let (out, stream, reply) = build(req, model, opts, &ANTHROPIC)?;
    let model = out
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let body = serde_json::to_vec(&Value::Object(out))
        .map_err(|e| Error::new(format!("writing the request: {e}")))?;
    Ok(Request {
        body,
        stream,
        reply,
        model,
    })
}

/// What a provider that takes a Messages-shaped request (Anthropic, and, through
/// `bedrock.rs` and `gemini.rs`, Bedrock Converse and Gemini) accepts.
pub struct Dialect {
    /// Named in errors: "cannot be translated to {name}".
    pub name: &'static str,
    pub max_temperature: f64,
}

pub const ANTHROPIC: Dialect = Dialect {
    name: "Anthropic",
    max_temperature: MAX_TEMPERATURE,
};

/// An OpenAI Chat request as an Anthropic Messages request (a JSON object), whether it
/// streams, and what its answer's translation needs.
pub fn build(
    mut req: Map<String, Value>,
    model: Option<&str>,
    opts: &Options,
    to: &Dialect,
) -> Result<(Map<String, Value>, bool, ReplySpec)> {
    let name = to.name;
    let mut out = Map::new();
    let model = match model {
        Some(m) => m.to_string(),
        None => match req.get("model").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => return Err(Error::new("`model` is required")),
        },
    };
    let requested = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&model)
        .to_string();
    out.insert("model".into(), model.into());

    if let Some(n) = count(req.get("n")) {
        if n != 1 {
            return Err(Error::new(format!(
                "`n` other than 1 cannot be translated to {name} (one answer per request)"
            )));
        }
    }
    if req.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err(Error::new(format!(
            "`logprobs` cannot be translated to {name}"
        )));
    }
    match req
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
    {
        None | Some("text") => {}
        Some(other) => {
            return Err(Error::new(format!(
                "`response_format` \"{other}\" cannot be translated to {name}"
            )))
        }
    }
    if req.get("audio").is_some_and(|a| !a.is_null())
        || req
            .get("modalities")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|x| x != "text"))
    {
        return Err(Error::new(format!(
            "audio output cannot be translated to {name}"
        )));
    }

    let messages = match req.remove("messages") {
        Some(Value::Array(m)) => m,
        _ => return Err(Error::new("`messages` must be an array")),
    };
    let (system, turns) = messages_to_anthropic(messages, name)?;
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(turns));

    let max_tokens = count(req.get("max_completion_tokens"))
        .or_else(|| count(req.get("max_tokens")))
        .unwrap_or(opts.default_max_tokens);
    out.insert("max_tokens".into(), max_tokens.into());

    if let Some(t) = req.get("temperature").filter(|t| !t.is_null()) {
        let Some(f) = t.as_f64() else {
            return Err(Error::new("`temperature` must be a number"));
        };
        if !(0.0..=to.max_temperature).contains(&f) {
            return Err(Error::new(format!(
                "`temperature` {f} is outside the range {name} accepts (0 to {})",
                to.max_temperature
            )));
        }
        out.insert("temperature".into(), t.clone());
    }
    if let Some(p) = req.get("top_p").filter(|t| !t.is_null()) {
        if !p.as_f64().is_some_and(|f| (0.0..=1.0).contains(&f)) {
            return Err(Error::new("`top_p` must be a number from 0 to 1"));
        }
        out.insert("top_p".into(), p.clone());
    }
    match req.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        Some(_) => return Err(Error::new("`stop` must be a string or an array of strings")),
    }

    if let Some(tools) = req.get("tools").filter(|t| !t.is_null()) {
        let Some(tools) = tools.as_array() else {
            return Err(Error::new("`tools` must be an array"));
        };
        let mut list = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            list.push(tool(t).map_err(|e| Error::new(format!("tools[{i}]: {}", e.message)))?);
        }
        if !list.is_empty() {
            out.insert("tools".into(), Value::Array(list));
        }
    }
    let parallel_off = req.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false);
    let mut choice = match req.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            other => {
                return Err(Error::new(format!(
                    "`tool_choice` \"{other}\" is not known"
                )))
            }
        }),
        Some(Value::Object(o)) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => Some(json!({"type": "tool", "name": name})),
            None => return Err(Error::new("`tool_choice` names no function")),
        },
        Some(_) => return Err(Error::new("`tool_choice` must be a string or an object")),
    };
    if parallel_off && out.contains_key("tools") {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = true.into();
        }
    }
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }

    if let Some(effort) = req.get("reasoning_effort").and_then(Value::as_str) {
        if let Some(budget) = thinking_budget(effort) {
            if max_tokens <= budget {
                return Err(Error::new(format!(
                    "`reasoning_effort` \"{effort}\" needs a thinking budget of {budget} tokens, so `max_tokens` must be above it (it is {max_tokens})"
                )));
            }
            out.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": budget}),
            );
        }
    }
    // An explicit Anthropic `thinking` setting passes through (clients that know).
    if let Some(t) = req.get("thinking").filter(|t| t.is_object()) {
        out.insert("thinking".into(), t.clone());
    }
    if let Some(u) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": u}));
    }
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    if stream {
        out.insert("stream".into(), true.into());
    }
    let include_usage = stream
        && req
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
    Ok((
        out,
        stream,
        ReplySpec {
            include_usage,
            model: requested,
        },
    ))
}

fn tool(t: &Value) -> Result<Value> {
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(Error::new("only `function` tools can be translated"));
    }
    let f = t
        .get("function")
        .ok_or_else(|| Error::new("`function` is missing"))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::new("`function.name` is missing"))?;
    let mut out = Map::new();
    out.insert("name".into(), name.into());
    if let Some(d) = f.get("description").and_then(Value::as_str) {
        out.insert("description".into(), d.into());
    }
    let schema = match f.get("parameters") {
        Some(p) if p.is_object() => p.clone(),
        _ => json!({"type": "object", "properties": {}}),
    };
    out.insert("input_schema".into(), schema);
    if let Some(c) = t.get("cache_control").or_else(|| f.get("cache_control")) {
        out.insert("cache_control".into(), c.clone());
    }
    Ok(Value::Object(out))
}

/// The chat messages as Anthropic's `system` blocks and alternating turns.
fn messages_to_anthropic(messages: Vec<Value>, name: &str) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut system = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, m) in messages.into_iter().enumerate() {
        let at = |e: Error| Error::new(format!("messages[{i}]: {}", e.message));
        let Value::Object(mut m) = m else {
            return Err(Error::new(format!("messages[{i}] must be an object")));
        };
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let content = m.remove("content").unwrap_or(Value::Null);
        let (role, blocks) = match role.as_str() {
            "system" | "developer" => {
                system.extend(text_blocks(content).map_err(at)?);
                continue;
            }
            "user" => ("user", user_blocks(content, name).map_err(at)?),
            "assistant" => ("assistant", assistant_blocks(&mut m, content).map_err(at)?),
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| at(Error::new("a tool message needs `tool_call_id`")))?;
                let mut result = json!({"type": "tool_result", "tool_use_id": id});
                match content {
                    Value::String(s) => result["content"] = s.into(),
                    Value::Null => {}
                    other => result["content"] = Value::Array(text_blocks(other).map_err(at)?),
                }
                ("user", vec![result])
            }
            "function" => {
                return Err(at(Error::new(
                    "the legacy `function` role cannot be translated; use `tool`",
                )))
            }
            other => return Err(at(Error::new(format!("unknown role \"{other}\"")))),
        };
        if blocks.is_empty() {
            continue;
        }
        // Consecutive turns of one role (tool results, then the user's text) merge, so
        // roles alternate as Anthropic requires; tool results lead their turn.
        match turns.last_mut() {
            Some((r, b)) if r == role => {
                b.extend(blocks);
            }
            _ => turns.push((role.to_string(), blocks)),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            if role == "user" {
                // tool_result blocks must come first in a user turn
                blocks.sort_by_key(|b| b["type"] != "tool_result");
            }
            json!({"role": role, "content": blocks})
        })
        .collect();
    Ok((system, turns))
}

/// Text content (a string or text parts) as text blocks, `cache_control` kept.
fn text_blocks(content: Value) -> Result<Vec<Value>> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(text_part(&p)?),
                    Some(other) => {
                        return Err(Error::new(format!(
                            "a `{other}` part is not allowed here, only text"
                        )))
                    }
                    None => return Err(Error::new("a content part has no `type`")),
                }
            }
            Ok(out)
        }
        _ => Err(Error::new(
            "`content` must be a string or an array of parts",
        )),
    }
}

fn text_part(p: &Value) -> Result<Value> {
    let text = p
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::new("a text part has no `text`"))?;
    let mut b = json!({"type": "text", "text": text});
    if let Some(c) = p.get("cache_control") {
        b["cache_control"] = c.clone();
    }
    Ok(b)
}

fn user_blocks(content: Value, name: &str) -> Result<Vec<Value>> {
    let Value::Array(parts) = content else {
        return text_blocks(content);
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => out.push(text_part(&p)?),
            Some("image_url") => {
                let url = p
                    .get("image_url")
                    .and_then(|u| u.get("url").or(Some(u)))
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::new("an image part has no `image_url.url`"))?;
                let mut b = json!({"type": "image", "source": image_source(url)?});
                if let Some(c) = p.get("cache_control") {
                    b["cache_control"] = c.clone();
                }
                out.push(b);
            }
            Some(other) => {
                return Err(Error::new(format!(
                    "a `{other}` content part cannot be translated to {name}"
                )))
            }
            None => return Err(Error::new("a content part has no `type`")),
        }
    }
    Ok(out)
}

/// A data URI becomes a base64 source, anything else a URL source.
fn image_source(url: &str) -> Result<Value> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, data)) = rest.split_once(',') else {
            return Err(Error::new("an image data URI has no `,`"));
        };
        let Some(media) = meta.strip_suffix(";base64") else {
            return Err(Error::new(
                "an image data URI must be base64 (`data:<type>;base64,...`)",
            ));
        };
        return Ok(json!({"type": "base64", "media_type": media, "data": data}));
    }
    Ok(json!({"type": "url", "url": url}))
}

fn assistant_blocks(m: &mut Map<String, Value>, content: Value) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    // Thinking is replayed first, with its signature, as Anthropic requires.
    if let Some(Value::Array(blocks)) = m.remove("thinking_blocks") {
        for b in blocks {
            match b.get("type").and_then(Value::as_str) {
                Some("thinking") => out.push(json!({
                    "type": "thinking",
                    "thinking": b.get("thinking").cloned().unwrap_or_else(|| "".into()),
                    "signature": b.get("signature").cloned().unwrap_or_else(|| "".into()),
                })),
                Some("redacted_thinking") => out.push(json!({
                    "type": "redacted_thinking",
                    "data": b.get("data").cloned().unwrap_or_else(|| "".into()),
                })),
                _ => {
                    return Err(Error::new(
                        "a `thinking_blocks` entry must be thinking or redacted_thinking",
                    ))
                }
            }
        }
    }
    match content {
        Value::Array(parts) => {
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(text_part(&p)?),
                    Some("refusal") => {
                        if let Some(t) = p.get("refusal").and_then(Value::as_str) {
                            out.push(json!({"type": "text", "text": t}));
                        }
                    }
                    _ => return Err(Error::new("an assistant message may hold only text parts")),
                }
            }
        }
        other => out.extend(text_blocks(other)?),
    }
    if let Some(Value::Array(calls)) = m.remove("tool_calls") {
        for c in calls {
            let id = c
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::new("a tool call has no `id`"))?;
            let f = c
                .get("function")
                .ok_or_else(|| Error::new("a tool call has no `function`"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::new("a tool call has no `function.name`"))?;
            let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
            let input = super::tool_arguments(args, &format!("tool call \"{id}\""))?;
            out.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    Ok(out)
}

/// Anthropic's stop reason as OpenAI's finish reason. An unknown one is an error: a
/// silent "stop" would hide a truncated or refused answer.
pub fn finish_reason(stop: &str) -> Result<&'static str> {
    Ok(match stop {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => {
            return Err(Error::new(format!(
                "the provider stopped for a reason the sidecar cannot translate: \"{other}\""
            )))
        }
    })
}

/// Anthropic usage as OpenAI usage: the prompt count includes cache reads and writes,
/// as OpenAI's does, and the reads are `cached_tokens`.
pub fn usage(u: &Value) -> Value {
    let input = count(u.get("input_tokens")).unwrap_or(0);
    let read = count(u.get("cache_read_input_tokens")).unwrap_or(0);
    let write = count(u.get("cache_creation_input_tokens")).unwrap_or(0);
    let output = count(u.get("output_tokens")).unwrap_or(0);
    let prompt = input + read + write;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": write},
    })
}

pub fn response(doc: Value, spec: &ReplySpec) -> Result<Value> {
    if doc.get("type").and_then(Value::as_str) == Some("error") {
        return Err(Error::new("the provider answered 2xx with an error body"));
    }
    let content = doc
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::new("the provider's answer has no `content` array"))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut thinking_blocks = Vec::new();
    let mut calls = Vec::new();
    for b in content {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                let t = b.get("thinking").and_then(Value::as_str).unwrap_or("");
                reasoning.push_str(t);
                thinking_blocks.push(json!({"type": "thinking", "thinking": t, "signature": b.get("signature").cloned().unwrap_or(Value::Null)}));
            }
            Some("redacted_thinking") => {
                thinking_blocks.push(json!({"type": "redacted_thinking", "data": b.get("data").cloned().unwrap_or(Value::Null)}));
            }
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": b.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": b.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": input.to_string(),
                    }
                }));
            }
            // Server tools' own blocks and future types carry nothing a chat client reads.
            _ => {}
        }
    }
    let stop = doc
        .get("stop_reason")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::new("the provider's answer has no `stop_reason`"))?;
    let finish = finish_reason(stop)?;
    let mut message = json!({"role": "assistant"});
    message["content"] = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        text.into()
    };
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = reasoning.into();
    }
    if !thinking_blocks.is_empty() {
        message["thinking_blocks"] = Value::Array(thinking_blocks);
    }
    message["refusal"] = Value::Null;
    let model = doc
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&spec.model);
    let mut out = json!({
        "id": doc.get("id").and_then(Value::as_str).map_or_else(|| "chatcmpl-sidecar".to_string(), |i| format!("chatcmpl-{i}")),
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
    });
    if let Some(u) = doc.get("usage") {
        out["usage"] = usage(u);
    }
    Ok(out)
}

/// What a stream's content block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call with its dense OpenAI index, and whether any argument bytes came.
    Tool {
        index: u32,
        args: bool,
    },
    Other,
}

/// An Anthropic stream (`message_start` … `message_stop`) told as OpenAI chunks.
pub struct ChatStream {
    reader: sse::Reader,
    spec: ReplySpec,
    id: String,
    model: String,
    created: u64,
    started: bool,
    /// By Anthropic's content-block index.
    blocks: Vec<Block>,
    next_tool: u32,
    usage: Map<String, Value>,
    finish: Option<&'static str>,
    stopped: bool,
    failed: bool,
}

impl ChatStream {
    pub fn new(spec: ReplySpec) -> ChatStream {
        ChatStream {
            reader: sse::Reader::default(),
            model: spec.model.clone(),
            spec,
            id: "chatcmpl-sidecar".into(),
            created: now_secs(),
            started: false,
            blocks: Vec::new(),
            next_tool: 0,
            usage: Map::new(),
            finish: None,
            stopped: false,
            failed: false,
        }
    }

    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let mut reader = std::mem::take(&mut self.reader);
        let r = reader.feed(chunk, |e| self.event(e.name, e.data, out));
        self.reader = reader;
        r
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let mut reader = std::mem::take(&mut self.reader);
        let r = reader.finish(|e| self.event(e.name, e.data, out));
        self.reader = reader;
        r?;
        if self.failed {
            return Ok(());
        }
        if !self.stopped {
            return Err(Error::new(
                "the provider's stream ended before its `message_stop` event",
            ));
        }
        Ok(())
    }

    /// The message ended (`message_stop` was read).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The provider's stream failed with an error event, passed on.
    pub fn failed(&self) -> bool {
        self.failed
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.spec.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    fn emit(&self, delta: Value, out: &mut Vec<u8>) {
        sse::data(&self.chunk(delta, None), out);
    }

    fn event(&mut self, name: &str, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.stopped || self.failed {
            return Ok(());
        }
        let ev: Value = serde_json::from_slice(data).map_err(|e| {
            Error::new(format!(
                "the provider sent a stream event that is not JSON: {e}"
            ))
        })?;
        self.apply(name, &ev, out)
    }

    /// Takes one Messages stream event (its SSE name, and its data): the events of
    /// Anthropic itself, or those that `bedrock.rs` and `gemini.rs` make from theirs.
    pub fn apply(&mut self, name: &str, ev: &Value, out: &mut Vec<u8>) -> Result<()> {
        if self.stopped || self.failed {
            return Ok(());
        }
        let ty = ev.get("type").and_then(Value::as_str).unwrap_or(name);
        match ty {
            "message_start" => {
                let m = ev.get("message").unwrap_or(&Value::Null);
                if let Some(id) = m.get("id").and_then(Value::as_str) {
                    self.id = format!("chatcmpl-{id}");
                }
                if let Some(model) = m.get("model").and_then(Value::as_str) {
                    self.model = model.to_string();
                }
                if let Some(Value::Object(u)) = m.get("usage") {
                    merge_usage(&mut self.usage, u);
                }
                self.started = true;
                self.emit(json!({"role": "assistant", "content": ""}), out);
            }
            "content_block_start" => {
                self.require_start()?;
                let i = block_index(ev)?;
                let b = ev.get("content_block").unwrap_or(&Value::Null);
                let kind = match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = b
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            self.emit(json!({"content": t}), out);
                        }
                        Block::Text
                    }
                    Some("thinking") => Block::Thinking,
                    Some("redacted_thinking") => {
                        self.emit(json!({"thinking_blocks": [{"type": "redacted_thinking", "data": b.get("data").cloned().unwrap_or(Value::Null)}]}), out);
                        Block::Other
                    }
                    Some("tool_use") => {
                        let index = self.next_tool;
                        self.next_tool += 1;
                        self.emit(
                            json!({"tool_calls": [{
                                "index": index,
                                "id": b.get("id").cloned().unwrap_or(Value::Null),
                                "type": "function",
                                "function": {"name": b.get("name").cloned().unwrap_or(Value::Null), "arguments": ""}
                            }]}),
                            out,
                        );
                        Block::Tool { index, args: false }
                    }
                    _ => Block::Other,
                };
                if self.blocks.len() <= i {
                    self.blocks.resize(i + 1, Block::Other);
                }
                self.blocks[i] = kind;
            }
            "content_block_delta" => {
                self.require_start()?;
                let i = block_index(ev)?;
                let d = ev.get("delta").unwrap_or(&Value::Null);
                let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("");
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") if !s("text").is_empty() => {
                        self.emit(json!({"content": s("text")}), out);
                    }
                    Some("thinking_delta") if !s("thinking").is_empty() => {
                        self.emit(json!({"reasoning_content": s("thinking")}), out);
                    }
                    Some("signature_delta") => {
                        self.emit(json!({"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": s("signature")}]}), out);
                    }
                    Some("input_json_delta") => {
                        let Some(Block::Tool { index, args }) = self.blocks.get_mut(i) else {
                            return Err(Error::new(format!(
                                "the provider sent tool arguments for content block {i}, which is not a tool call"
                            )));
                        };
                        let part = s("partial_json");
                        if !part.is_empty() {
                            *args = true;
                            let index = *index;
                            self.emit(json!({"tool_calls": [{"index": index, "function": {"arguments": part}}]}), out);
                        }
                    }
                    _ => {} // citations and future delta types carry no chat text
                }
            }
            "content_block_stop" => {
                let i = block_index(ev)?;
                if let Some(Block::Tool { index, args: false }) = self.blocks.get(i).copied() {
                    // A tool called with no arguments still gets a JSON object.
                    self.emit(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": "{}"}}]}),
                        out,
                    );
                    self.blocks[i] = Block::Tool { index, args: true };
                }
            }
            "message_delta" => {
                self.require_start()?;
                if let Some(Value::Object(u)) = ev.get("usage") {
                    merge_usage(&mut self.usage, u);
                }
                if let Some(stop) = ev.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    let f = finish_reason(stop)?;
                    self.finish = Some(f);
                    sse::data(&self.chunk(json!({}), Some(f)), out);
                }
            }
            "message_stop" => {
                self.require_start()?;
                if self.finish.is_none() {
                    return Err(Error::new(
                        "the provider's stream ended without a stop reason",
                    ));
                }
                if self.spec.include_usage {
                    let mut c = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                    });
                    c["usage"] = usage(&Value::Object(self.usage.clone()));
                    sse::data(&c, out);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.stopped = true;
            }
            "ping" => {}
            "error" => {
                let msg = ev
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("the provider's stream failed");
                let kind = ev
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("api_error");
                sse::data(
                    &json!({"error": {"message": msg, "type": kind, "param": null, "code": kind}}),
                    out,
                );
                self.failed = true;
            }
            _ => {} // events added later carry nothing a chat client reads
        }
        Ok(())
    }

    fn require_start(&self) -> Result<()> {
        if self.started {
            Ok(())
        } else {
            Err(Error::new(
                "the provider's stream did not begin with `message_start`",
            ))
        }
    }
}

fn block_index(ev: &Value) -> Result<usize> {
    count(ev.get("index"))
        .and_then(|i| usize::try_from(i).ok())
        .filter(|i| *i < 4096)
        .ok_or_else(|| Error::new("a content block event has no valid `index`"))
}

/// Usage reports in a stream are partial (`message_start`) or cumulative
/// (`message_delta`): the larger count of each field wins.
fn merge_usage(into: &mut Map<String, Value>, u: &Map<String, Value>) {
    for (k, v) in u {
        let Some(n) = count(Some(v)) else { continue };
        let cur = count(into.get(k)).unwrap_or(0);
        if n >= cur {
            into.insert(k.clone(), n.into());
        }
    }
}

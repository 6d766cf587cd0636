//! Anthropic Messages clients, OpenAI Chat Completions providers (OpenAI itself and every
//! OpenAI-compatible kind): the request from messages to chat, the answer and its stream
//! from chat to messages.

use super::{count, sse, Error, ReplySpec, Request, Result};
use serde_json::{json, Map, Value};

pub fn request(req: Map<String, Value>, model: Option<&str>) -> Result<Request> {
    let mut out = Map::new();
    let requested = req.get("model").and_then(Value::as_str).map(str::to_string);
    let model = match (model, &requested) {
        (Some(m), _) => m.to_string(),
        (None, Some(m)) => m.clone(),
        (None, None) => return Err(Error::new("`model` is required")),
    };
    out.insert("model".into(), model.clone().into());
    let target_model = model.clone();

    let mut messages = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text = blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n");
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => return Err(Error::new("`system` must be a string or text blocks")),
    }
    let Some(turns) = req.get("messages").and_then(Value::as_array) else {
        return Err(Error::new("`messages` must be an array"));
    };
    for (i, t) in turns.iter().enumerate() {
        turn(t, &mut messages).map_err(|e| Error::new(format!("messages[{i}]: {}", e.message)))?;
    }
    out.insert("messages".into(), Value::Array(messages));

    let Some(max) = count(req.get("max_tokens")) else {
        return Err(Error::new("`max_tokens` is required"));
    };
    out.insert("max_tokens".into(), max.into());
    for k in ["temperature", "top_p"] {
        if let Some(v) = req.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(s) = req.get("stop_sequences").and_then(Value::as_array) {
        if !s.is_empty() {
            out.insert("stop".into(), Value::Array(s.clone()));
        }
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let mut list = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::new(format!("tools[{i}] has no `name`")))?;
            if t.get("type")
                .and_then(Value::as_str)
                .is_some_and(|ty| ty != "custom")
                && t.get("input_schema").is_none()
            {
                return Err(Error::new(format!(
                    "tools[{i}] (\"{name}\") is an Anthropic server tool, which OpenAI-shaped providers do not run"
                )));
            }
            let mut f = json!({"name": name, "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
            if let Some(d) = t.get("description") {
                f["description"] = d.clone();
            }
            list.push(json!({"type": "function", "function": f}));
        }
        if !list.is_empty() {
            out.insert("tools".into(), Value::Array(list));
        }
    }
    if let Some(c) = req.get("tool_choice").filter(|c| c.is_object()) {
        let choice = match c.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                let name = c
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::new("`tool_choice` of type tool names no tool"))?;
                json!({"type": "function", "function": {"name": name}})
            }
            _ => return Err(Error::new("`tool_choice.type` is not known")),
        };
        out.insert("tool_choice".into(), choice);
        if c.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true)
            && out.contains_key("tools")
        {
            out.insert("parallel_tool_calls".into(), false.into());
        }
    }
    if let Some(u) = req
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), u.into());
    }
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    if stream {
        out.insert("stream".into(), true.into());
        // The usage chunk feeds `message_delta`'s counts (and the token budgets).
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let body = serde_json::to_vec(&Value::Object(out))
        .map_err(|e| Error::new(format!("writing the request: {e}")))?;
    Ok(Request {
        body,
        stream,
        reply: ReplySpec {
            include_usage: stream,
            model: requested.unwrap_or(model),
        },
        model: target_model,
    })
}

/// One Anthropic turn as chat messages: a user turn's tool results become `tool`
/// messages (first, as OpenAI wants them right after the assistant's calls).
fn turn(t: &Value, messages: &mut Vec<Value>) -> Result<()> {
    let role = t.get("role").and_then(Value::as_str).unwrap_or_default();
    let content = t.get("content").unwrap_or(&Value::Null);
    let blocks: Vec<Value> = match content {
        Value::String(s) => vec![json!({"type": "text", "text": s})],
        Value::Array(b) => b.clone(),
        _ => return Err(Error::new("`content` must be a string or blocks")),
    };
    match role {
        "user" => {
            let mut parts = Vec::new();
            for b in &blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => parts.push(json!({"type": "text", "text": b.get("text").cloned().unwrap_or_else(|| "".into())})),
                    Some("image") => {
                        let src = b.get("source").unwrap_or(&Value::Null);
                        let url = match src.get("type").and_then(Value::as_str) {
                            Some("base64") => format!(
                                "data:{};base64,{}",
                                src.get("media_type").and_then(Value::as_str).unwrap_or("image/png"),
                                src.get("data").and_then(Value::as_str).unwrap_or("")
                            ),
                            Some("url") => src.get("url").and_then(Value::as_str).unwrap_or("").to_string(),
                            _ => return Err(Error::new("an image source must be base64 or url")),
                        };
                        parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                    }
                    Some("tool_result") => {
                        let id = b
                            .get("tool_use_id")
                            .and_then(Value::as_str)
                            .ok_or_else(|| Error::new("a tool_result has no `tool_use_id`"))?;
                        let text = match b.get("content") {
                            Some(Value::String(s)) => s.clone(),
                            Some(Value::Array(c)) => c
                                .iter()
                                .filter_map(|x| x.get("text").and_then(Value::as_str))
                                .collect::<Vec<_>>()
                                .join("\n"),
                            _ => String::new(),
                        };
                        messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                    }
                    Some(other) => {
                        return Err(Error::new(format!(
                            "a `{other}` block cannot be translated to an OpenAI-shaped provider"
                        )))
                    }
                    None => return Err(Error::new("a content block has no `type`")),
                }
            }
            if !parts.is_empty() {
                let content = if parts.iter().all(|p| p["type"] == "text") {
                    Value::String(
                        parts
                            .iter()
                            .filter_map(|p| p["text"].as_str())
                            .collect::<Vec<_>>()
                            .join("\n"),
                    )
                } else {
                    Value::Array(parts)
                };
                messages.push(json!({"role": "user", "content": content}));
            }
        }
        "assistant" => {
            let mut text = String::new();
            let mut calls = Vec::new();
            for b in &blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some("tool_use") => calls.push(json!({
                        "id": b.get("id").cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": {
                            "name": b.get("name").cloned().unwrap_or(Value::Null),
                            "arguments": b.get("input").cloned().unwrap_or_else(|| json!({})).to_string(),
                        }
                    })),
                    // Thinking is signed for Anthropic models only: not replayable here.
                    Some("thinking" | "redacted_thinking") => {}
                    Some(other) => {
                        return Err(Error::new(format!(
                            "a `{other}` block cannot be translated to an OpenAI-shaped provider"
                        )))
                    }
                    None => return Err(Error::new("a content block has no `type`")),
                }
            }
            let mut m = json!({"role": "assistant"});
            m["content"] = if text.is_empty() && !calls.is_empty() {
                Value::Null
            } else {
                text.into()
            };
            if !calls.is_empty() {
                m["tool_calls"] = Value::Array(calls);
            }
            messages.push(m);
        }
        other => return Err(Error::new(format!("unknown role \"{other}\""))),
    }
    Ok(())
}

/// OpenAI's finish reason as Anthropic's stop reason.
pub fn stop_reason(finish: &str) -> Result<&'static str> {
    Ok(match finish {
        "stop" => "end_turn",
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        other => {
            return Err(Error::new(format!(
                "the provider stopped for a reason the sidecar cannot translate: \"{other}\""
            )))
        }
    })
}

/// OpenAI usage as Anthropic usage: cached prompt tokens are counted apart.
fn usage(u: &Value) -> Value {
    let prompt = count(u.get("prompt_tokens")).unwrap_or(0);
    let cached = count(u.pointer("/prompt_tokens_details/cached_tokens"))
        .or_else(|| count(u.get("prompt_cache_hit_tokens")))
        .unwrap_or(0)
        .min(prompt);
    json!({
        "input_tokens": prompt - cached,
        "output_tokens": count(u.get("completion_tokens")).unwrap_or(0),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    })
}

fn message_id(id: Option<&str>) -> String {
    match id {
        Some(i) => format!("msg_{}", i.trim_start_matches("chatcmpl-")),
        None => "msg_sidecar".into(),
    }
}

pub fn response(doc: Value, spec: &ReplySpec) -> Result<Value> {
    let choice = doc
        .pointer("/choices/0")
        .ok_or_else(|| Error::new("the provider's answer has no `choices`"))?;
    let m = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(t) = m
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    }
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        for c in calls {
            let args = c
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("");
            let input = super::tool_arguments(args, "the provider's tool call")?;
            content.push(json!({
                "type": "tool_use",
                "id": c.get("id").cloned().unwrap_or(Value::Null),
                "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null),
                "input": input,
            }));
        }
    }
    let has_tools = content.iter().any(|b| b["type"] == "tool_use");
    let stop = match choice.get("finish_reason").and_then(Value::as_str) {
        Some(f) => stop_reason(f)?,
        // A provider that leaves it null: the content says what happened.
        None if has_tools => "tool_use",
        None => "end_turn",
    };
    Ok(json!({
        "id": message_id(doc.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": doc.get("model").and_then(Value::as_str).unwrap_or(&spec.model),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": doc.get("usage").map_or_else(|| usage(&json!({})), usage),
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Thinking,
    /// The tool call with this OpenAI index.
    Tool(u64),
}

/// An OpenAI chunk stream told as Anthropic events: exactly one `message_start`, content
/// blocks opened and closed in order, never two open at once.
pub struct MessagesStream {
    reader: sse::Reader,
    spec: ReplySpec,
    started: bool,
    open: Open,
    /// Anthropic's next content-block index.
    next_block: u64,
    /// OpenAI tool indexes already closed (a late delta for one is an error).
    closed_tools: Vec<u64>,
    any_tool: bool,
    finish: Option<&'static str>,
    usage: Option<Value>,
    done: bool,
}

impl MessagesStream {
    pub fn new(spec: ReplySpec) -> MessagesStream {
        MessagesStream {
            reader: sse::Reader::default(),
            spec,
            started: false,
            open: Open::None,
            next_block: 0,
            closed_tools: Vec::new(),
            any_tool: false,
            finish: None,
            usage: None,
            done: false,
        }
    }

    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let mut reader = std::mem::take(&mut self.reader);
        let r = reader.feed(chunk, |e| self.event(e.data, out));
        self.reader = reader;
        r
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let mut reader = std::mem::take(&mut self.reader);
        let r = reader.finish(|e| self.event(e.data, out));
        self.reader = reader;
        r?;
        if !self.done {
            // OpenAI-compatible servers that end without `[DONE]` but with a finish
            // reason ended properly; one with neither was cut.
            if self.finish.is_none() {
                return Err(Error::new(
                    "the provider's stream ended before its finish reason",
                ));
            }
            self.end(out);
        }
        Ok(())
    }

    fn start(&mut self, id: Option<&str>, model: Option<&str>, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        sse::named(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": message_id(id),
                "type": "message",
                "role": "assistant",
                "model": model.unwrap_or(&self.spec.model),
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
            out,
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open == Open::None {
            return;
        }
        if let Open::Tool(i) = self.open {
            self.closed_tools.push(i);
        }
        sse::named(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": self.next_block}),
            out,
        );
        self.next_block += 1;
        self.open = Open::None;
    }

    fn open(&mut self, kind: Open, block: Value, out: &mut Vec<u8>) {
        self.close(out);
        sse::named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.next_block, "content_block": block}),
            out,
        );
        self.open = kind;
    }

    fn delta(&self, delta: Value, out: &mut Vec<u8>) {
        sse::named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.next_block, "delta": delta}),
            out,
        );
    }

    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.done {
            return Ok(());
        }
        if data.trim_ascii() == b"[DONE]" {
            // A provider that leaves the last finish_reason null: `end` infers it.
            self.end(out);
            return Ok(());
        }
        let c: Value = serde_json::from_slice(data).map_err(|e| {
            Error::new(format!(
                "the provider sent a stream event that is not JSON: {e}"
            ))
        })?;
        if let Some(e) = c.get("error").filter(|e| !e.is_null()) {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the provider's stream failed");
            self.start(None, None, out);
            sse::anthropic_error_event(msg, out);
            self.done = true;
            return Ok(());
        }
        self.start(
            c.get("id").and_then(Value::as_str),
            c.get("model").and_then(Value::as_str),
            out,
        );
        if let Some(u) = c.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = c.pointer("/choices/0") else {
            return Ok(()); // the usage chunk
        };
        let d = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(r) = d
            .get("reasoning_content")
            .or_else(|| d.get("reasoning"))
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            if self.open != Open::Thinking {
                self.open(
                    Open::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
            }
            self.delta(json!({"type": "thinking_delta", "thinking": r}), out);
        }
        if let Some(t) = d
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            if self.open != Open::Text {
                self.open(Open::Text, json!({"type": "text", "text": ""}), out);
            }
            self.delta(json!({"type": "text_delta", "text": t}), out);
        }
        if let Some(calls) = d.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                let index = count(call.get("index")).unwrap_or(0);
                if self.open != Open::Tool(index) {
                    if self.closed_tools.contains(&index) {
                        return Err(Error::new(format!(
                            "the provider interleaved tool call {index} with another; Anthropic streams one block at a time"
                        )));
                    }
                    self.any_tool = true;
                    self.open(
                        Open::Tool(index),
                        json!({"type": "tool_use",
                            "id": call.get("id").cloned().unwrap_or_else(|| format!("toolu_sidecar_{index}").into()),
                            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
                            "input": {}}),
                        out,
                    );
                }
                if let Some(a) = call
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .filter(|a| !a.is_empty())
                {
                    self.delta(json!({"type": "input_json_delta", "partial_json": a}), out);
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(stop_reason(f)?);
        }
        Ok(())
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.start(None, None, out);
        self.close(out);
        let stop = self.finish.unwrap_or(if self.any_tool {
            "tool_use"
        } else {
            "end_turn"
        });
        let u = self.usage.as_ref().map_or_else(|| usage(&json!({})), usage);
        sse::named(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": u}),
            out,
        );
        sse::named("message_stop", &json!({"type": "message_stop"}), out);
        self.done = true;
    }
}

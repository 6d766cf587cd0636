//! Amazon Bedrock Converse targets (`/model/{id}/converse`, `/converse-stream`).
//!
//! A request is first made Messages-shaped (an OpenAI Chat request by the rules of
//! `anthropic.rs`; a Messages request is already), then mapped block for block onto
//! Converse. The answer comes back the other way: a Converse document or event stream
//! is told as Messages (see `hub.rs`), then as the front's API.

use super::{anthropic, count, eventstream, hub, Api, Error, Options, ReplySpec, Request, Result};
use serde_json::{json, Map, Value};

const BEDROCK: anthropic::Dialect = anthropic::Dialect {
    name: "Bedrock",
    max_temperature: 1.0,
};

pub fn request(
    front: Api,
    req: Map<String, Value>,
    model: Option<&str>,
    opts: &Options,
) -> Result<Request> {
    let (mut m, stream, reply) = match front {
        Api::OpenAiChat => anthropic::build(req, model, opts, &BEDROCK)?,
        _ => messages_request(req, model)?,
    };
    let model = match m.remove("model") {
        Some(Value::String(s)) => s,
        _ => return Err(Error::new("`model` is required")),
    };
    // The answer names no model: it is the one the request went to.
    let reply = ReplySpec {
        model: model.clone(),
        ..reply
    };
    m.remove("stream");
    let out = converse(m)?;
    Ok(Request {
        body: serde_json::to_vec(&Value::Object(out))
            .map_err(|e| Error::new(format!("writing the request: {e}")))?,
        stream,
        reply,
        model,
    })
}

/// A Messages request as it comes, with the model written in, whether it streams, and
/// what its answer needs.
pub fn messages_request(
    mut req: Map<String, Value>,
    model: Option<&str>,
) -> Result<(Map<String, Value>, bool, ReplySpec)> {
    let requested = req.get("model").and_then(Value::as_str).map(str::to_string);
    let model = match (model, &requested) {
        (Some(m), _) => m.to_string(),
        (None, Some(m)) => m.clone(),
        (None, None) => return Err(Error::new("`model` is required")),
    };
    req.insert("model".into(), model.clone().into());
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    Ok((
        req,
        stream,
        ReplySpec {
            include_usage: stream,
            model: requested.unwrap_or(model),
        },
    ))
}

/// A Messages request (model and stream taken out) as a Converse request.
fn converse(m: Map<String, Value>) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    let mut inference = Map::new();
    let mut extra = Map::new();
    let mut tools: Option<Vec<Value>> = None;
    let mut choice: Option<Value> = None;
    let mut history_tools: Vec<String> = Vec::new();
    for (k, v) in m {
        match k.as_str() {
            "system" => {
                let blocks = match v {
                    Value::String(s) => vec![json!({"type": "text", "text": s})],
                    Value::Array(b) => b,
                    _ => return Err(Error::new("`system` must be a string or text blocks")),
                };
                let mut sys = Vec::with_capacity(blocks.len());
                for b in &blocks {
                    let text = b
                        .get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(|| Error::new("`system` may hold only text blocks"))?;
                    sys.push(json!({"text": text}));
                    cache_point(b, &mut sys);
                }
                out.insert("system".into(), Value::Array(sys));
            }
            "messages" => {
                let Value::Array(turns) = v else {
                    return Err(Error::new("`messages` must be an array"));
                };
                out.insert("messages".into(), messages(turns, &mut history_tools)?);
            }
            "max_tokens" => {
                inference.insert("maxTokens".into(), v);
            }
            "temperature" => {
                inference.insert("temperature".into(), v);
            }
            "top_p" => {
                inference.insert("topP".into(), v);
            }
            "stop_sequences" => {
                inference.insert("stopSequences".into(), v);
            }
            // Model-specific fields go where Converse takes them (Claude reads both).
            "top_k" | "thinking" => {
                extra.insert(k, v);
            }
            "tools" => {
                let Value::Array(list) = v else {
                    return Err(Error::new("`tools` must be an array"));
                };
                let mut specs = Vec::with_capacity(list.len());
                for (i, t) in list.iter().enumerate() {
                    let name = t
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| Error::new(format!("tools[{i}] has no `name`")))?;
                    let Some(schema) = t.get("input_schema") else {
                        return Err(Error::new(format!(
                            "tools[{i}] (\"{name}\") is an Anthropic server tool, which Bedrock Converse does not run"
                        )));
                    };
                    let mut spec = json!({"name": name, "inputSchema": {"json": schema}});
                    if let Some(d) = t.get("description") {
                        spec["description"] = d.clone();
                    }
                    specs.push(json!({"toolSpec": spec}));
                    cache_point(t, &mut specs);
                }
                tools = Some(specs);
            }
            "tool_choice" => {
                choice = match v.get("type").and_then(Value::as_str) {
                    Some("auto") => Some(json!({"auto": {}})),
                    Some("any") => Some(json!({"any": {}})),
                    Some("tool") => {
                        let name = v.get("name").and_then(Value::as_str).ok_or_else(|| {
                            Error::new("`tool_choice` of type tool names no tool")
                        })?;
                        Some(json!({"tool": {"name": name}}))
                    }
                    // Converse has no "none": the tools are left out (below).
                    Some("none") => Some(Value::Null),
                    _ => return Err(Error::new("`tool_choice.type` is not known")),
                };
            }
            // Bedrock has no field for these; they change nothing in the answer.
            "metadata" | "service_tier" => {}
            other => {
                return Err(Error::new(format!(
                    "`{other}` cannot be translated to Bedrock Converse"
                )))
            }
        }
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if !extra.is_empty() {
        out.insert("additionalModelRequestFields".into(), Value::Object(extra));
    }
    // Converse refuses a history with tool use unless `toolConfig` is sent: a request
    // whose history holds calls but which offers no tools (or says "none") still
    // declares the tools it used, so that the model can read its own history.
    let none = choice.as_ref().is_some_and(Value::is_null);
    let tools = match tools {
        Some(t) if !none => Some(t),
        _ if !history_tools.is_empty() => Some(
            history_tools
                .iter()
                .map(|n| json!({"toolSpec": {"name": n, "inputSchema": {"json": {"type": "object"}}}}))
                .collect(),
        ),
        _ => None,
    };
    if let Some(tools) = tools {
        let mut config = json!({"tools": tools});
        if let Some(c) = choice.filter(|c| !c.is_null()) {
            config["toolChoice"] = c;
        }
        out.insert("toolConfig".into(), config);
    }
    Ok(out)
}

/// A block's `cache_control` becomes a cache point after it.
fn cache_point(block: &Value, into: &mut Vec<Value>) {
    if block.get("cache_control").is_some_and(|c| !c.is_null()) {
        into.push(json!({"cachePoint": {"type": "default"}}));
    }
}

/// Messages turns as Converse messages; roles alternate (a run of one role is merged).
fn messages(turns: Vec<Value>, history_tools: &mut Vec<String>) -> Result<Value> {
    let mut out: Vec<(String, Vec<Value>)> = Vec::with_capacity(turns.len());
    for (i, t) in turns.into_iter().enumerate() {
        let at = |e: Error| Error::new(format!("messages[{i}]: {}", e.message));
        let role = match t.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant")) => r.to_string(),
            _ => return Err(at(Error::new("`role` must be user or assistant"))),
        };
        let blocks = match t.get("content") {
            Some(Value::String(s)) => vec![json!({"text": s})],
            Some(Value::Array(b)) => {
                let mut list = Vec::with_capacity(b.len());
                for block in b {
                    content_block(block, &mut list, history_tools).map_err(at)?;
                }
                list
            }
            _ => return Err(at(Error::new("`content` must be a string or blocks"))),
        };
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => out.push((role, blocks)),
        }
    }
    Ok(Value::Array(
        out.into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect(),
    ))
}

fn content_block(b: &Value, out: &mut Vec<Value>, history_tools: &mut Vec<String>) -> Result<()> {
    let s = |k: &str| b.get(k).and_then(Value::as_str);
    match s("type") {
        Some("text") => out.push(json!({"text": s("text").unwrap_or("")})),
        Some("image") => out.push(json!({"image": image(b.get("source"))?})),
        Some("tool_use") => {
            let name = s("name").ok_or_else(|| Error::new("a tool_use block has no `name`"))?;
            if !history_tools.iter().any(|n| n == name) {
                history_tools.push(name.to_string());
            }
            out.push(json!({"toolUse": {
                "toolUseId": s("id").ok_or_else(|| Error::new("a tool_use block has no `id`"))?,
                "name": name,
                "input": b.get("input").cloned().unwrap_or_else(|| json!({})),
            }}));
        }
        Some("tool_result") => {
            let id = s("tool_use_id")
                .ok_or_else(|| Error::new("a tool_result block has no `tool_use_id`"))?;
            let mut content = Vec::new();
            match b.get("content") {
                None | Some(Value::Null) => {}
                Some(Value::String(t)) => content.push(json!({"text": t})),
                Some(Value::Array(parts)) => {
                    for p in parts {
                        match p.get("type").and_then(Value::as_str) {
                            Some("text") => content.push(json!({"text": p.get("text").and_then(Value::as_str).unwrap_or("")})),
                            Some("image") => content.push(json!({"image": image(p.get("source"))?})),
                            _ => return Err(Error::new("a tool result may hold only text and images for Bedrock")),
                        }
                    }
                }
                Some(_) => {
                    return Err(Error::new(
                        "a tool_result's `content` must be a string or blocks",
                    ))
                }
            }
            if content.is_empty() {
                // Converse wants content in every result; an empty object says "nothing".
                content.push(json!({"json": {}}));
            }
            let mut r = json!({"toolUseId": id, "content": content});
            if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                r["status"] = "error".into();
            }
            out.push(json!({"toolResult": r}));
        }
        Some("thinking") => out.push(json!({"reasoningContent": {"reasoningText": {
            "text": s("thinking").unwrap_or(""),
            "signature": s("signature").unwrap_or(""),
        }}})),
        Some("redacted_thinking") => {
            out.push(json!({"reasoningContent": {"redactedContent": s("data").unwrap_or("")}}))
        }
        Some(other) => {
            return Err(Error::new(format!(
                "a `{other}` block cannot be translated to Bedrock Converse"
            )))
        }
        None => return Err(Error::new("a content block has no `type`")),
    }
    cache_point(b, out);
    Ok(())
}

fn image(source: Option<&Value>) -> Result<Value> {
    let src = source.ok_or_else(|| Error::new("an image has no `source`"))?;
    match src.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = src.get("media_type").and_then(Value::as_str).unwrap_or("");
            let format = match media {
                "image/png" => "png",
                "image/jpeg" | "image/jpg" => "jpeg",
                "image/gif" => "gif",
                "image/webp" => "webp",
                other => {
                    return Err(Error::new(format!(
                    "an image of type \"{other}\" cannot be sent to Bedrock (png, jpeg, gif, webp)"
                )))
                }
            };
            Ok(
                json!({"format": format, "source": {"bytes": src.get("data").cloned().unwrap_or(Value::Null)}}),
            )
        }
        _ => Err(Error::new(
            "Bedrock takes images as bytes only: send the image as a data URI, not a URL",
        )),
    }
}

/// Converse's stop reason as Messages'. An unknown one is an error.
fn stop_reason(s: &str) -> Result<&'static str> {
    Ok(match s {
        "end_turn" => "end_turn",
        "tool_use" => "tool_use",
        "max_tokens" => "max_tokens",
        "stop_sequence" => "stop_sequence",
        "model_context_window_exceeded" => "model_context_window_exceeded",
        "guardrail_intervened" | "content_filtered" => "refusal",
        other => {
            return Err(Error::new(format!(
                "the provider stopped for a reason the sidecar cannot translate: \"{other}\""
            )))
        }
    })
}

/// Converse usage as Messages usage (Converse's `inputTokens` excludes the cache).
fn usage(u: &Value) -> Value {
    let n = |k: &str| count(u.get(k)).unwrap_or(0);
    json!({
        "input_tokens": n("inputTokens"),
        "output_tokens": n("outputTokens"),
        "cache_read_input_tokens": n("cacheReadInputTokens"),
        "cache_creation_input_tokens": n("cacheWriteInputTokens"),
    })
}

/// A Converse answer as the front's document.
pub fn response(front: Api, doc: Value, spec: &ReplySpec) -> Result<Value> {
    let content = doc
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::new("the provider's answer has no `output.message.content`"))?;
    let mut blocks = Vec::with_capacity(content.len());
    for b in content {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            blocks.push(json!({"type": "text", "text": t}));
        } else if let Some(u) = b.get("toolUse") {
            blocks.push(json!({
                "type": "tool_use",
                "id": u.get("toolUseId").cloned().unwrap_or(Value::Null),
                "name": u.get("name").cloned().unwrap_or(Value::Null),
                "input": u.get("input").cloned().unwrap_or_else(|| json!({})),
            }));
        } else if let Some(r) = b.get("reasoningContent") {
            if let Some(t) = r.get("reasoningText") {
                blocks.push(json!({
                    "type": "thinking",
                    "thinking": t.get("text").cloned().unwrap_or_else(|| "".into()),
                    "signature": t.get("signature").cloned().unwrap_or_else(|| "".into()),
                }));
            } else if let Some(d) = r.get("redactedContent") {
                blocks.push(json!({"type": "redacted_thinking", "data": d}));
            }
        }
    }
    let stop = doc
        .get("stopReason")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::new("the provider's answer has no `stopReason`"))?;
    let msg = json!({
        "id": hub::message_id("msg_bdrk_"),
        "type": "message",
        "role": "assistant",
        "model": spec.model,
        "content": blocks,
        "stop_reason": stop_reason(stop)?,
        "stop_sequence": null,
        "usage": doc.get("usage").map_or_else(|| usage(&json!({})), usage),
    });
    hub::document(front, msg, spec)
}

/// What kind of block a stream's content-block index holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Unopened,
    Text,
    Thinking,
    Tool,
    Closed,
}

/// A ConverseStream told as the front's stream.
pub struct Stream {
    decoder: eventstream::Decoder,
    sink: hub::Sink,
    model: String,
    started: bool,
    blocks: Vec<Block>,
    /// From `messageStop`; the message ends when `metadata` (with usage) follows, or
    /// at the end of the body.
    stop: Option<&'static str>,
    ended: bool,
}

impl Stream {
    pub fn new(front: Api, spec: ReplySpec) -> Stream {
        Stream {
            decoder: eventstream::Decoder::default(),
            model: spec.model.clone(),
            sink: hub::Sink::new(front, spec),
            started: false,
            blocks: Vec::new(),
            stop: None,
            ended: false,
        }
    }

    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let mut decoder = std::mem::take(&mut self.decoder);
        let r = decoder.feed(chunk, |m| self.message(m, out));
        self.decoder = decoder;
        r
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.sink.failed() {
            return Ok(());
        }
        self.decoder.finish()?;
        if !self.ended {
            if self.stop.is_none() {
                return Err(Error::new(
                    "the provider's stream ended before its `messageStop` event",
                ));
            }
            self.end(None, out)?;
        }
        self.sink.end()
    }

    fn end(&mut self, u: Option<&Value>, out: &mut Vec<u8>) -> Result<()> {
        let stop = self.stop.unwrap_or("end_turn");
        let usage = u.map_or_else(|| usage(&json!({})), usage);
        self.sink.event(
            &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": usage}),
            out,
        )?;
        self.sink.event(&json!({"type": "message_stop"}), out)?;
        self.ended = true;
        Ok(())
    }

    fn open(&mut self, i: usize, kind: Block, block: Value, out: &mut Vec<u8>) -> Result<()> {
        if self.blocks.len() <= i {
            self.blocks.resize(i + 1, Block::Unopened);
        }
        if self.blocks[i] != Block::Unopened {
            return Ok(());
        }
        self.blocks[i] = kind;
        self.sink.event(
            &json!({"type": "content_block_start", "index": i, "content_block": block}),
            out,
        )
    }

    fn message(&mut self, m: eventstream::Message<'_>, out: &mut Vec<u8>) -> Result<()> {
        if self.ended || self.sink.failed() {
            return Ok(());
        }
        let ev: Value = serde_json::from_slice(m.payload).map_err(|e| {
            Error::new(format!(
                "the provider sent a stream event that is not JSON: {e}"
            ))
        })?;
        if m.message_type == "exception" || m.message_type == "error" {
            let message = ev
                .get("message")
                .or_else(|| ev.get("Message"))
                .and_then(Value::as_str)
                .unwrap_or("the provider's stream failed");
            let kind = match m.exception_type {
                "throttlingException" => "rate_limit_error",
                "validationException" => "invalid_request_error",
                "serviceUnavailableException" => "overloaded_error",
                _ => "api_error",
            };
            let text = format!("{message} ({})", m.exception_type);
            return self.sink.event(&hub::error_event(kind, &text), out);
        }
        let index = || {
            count(ev.get("contentBlockIndex"))
                .and_then(|i| usize::try_from(i).ok())
                .filter(|i| *i < 4096)
                .ok_or_else(|| Error::new("a content block event has no valid `contentBlockIndex`"))
        };
        if m.event_type != "messageStart" && !self.started {
            return Err(Error::new(
                "the provider's stream did not begin with `messageStart`",
            ));
        }
        match m.event_type {
            "messageStart" => {
                self.started = true;
                let start = hub::message_start(hub::message_id("msg_bdrk_"), &self.model);
                self.sink.event(&start, out)?;
            }
            "contentBlockStart" => {
                let i = index()?;
                if let Some(u) = ev.pointer("/start/toolUse") {
                    self.open(
                        i,
                        Block::Tool,
                        json!({"type": "tool_use", "id": u.get("toolUseId").cloned().unwrap_or(Value::Null),
                               "name": u.get("name").cloned().unwrap_or(Value::Null), "input": {}}),
                        out,
                    )?;
                }
            }
            "contentBlockDelta" => {
                let i = index()?;
                let d = ev.get("delta").unwrap_or(&Value::Null);
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    self.open(i, Block::Text, json!({"type": "text", "text": ""}), out)?;
                    self.sink.event(
                        &json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": t}}),
                        out,
                    )?;
                } else if let Some(u) = d.get("toolUse") {
                    if self.blocks.get(i) != Some(&Block::Tool) {
                        return Err(Error::new(format!(
                            "the provider sent tool input for content block {i}, which is not a tool call"
                        )));
                    }
                    let part = u.get("input").and_then(Value::as_str).unwrap_or("");
                    self.sink.event(
                        &json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": part}}),
                        out,
                    )?;
                } else if let Some(r) = d.get("reasoningContent") {
                    self.open(
                        i,
                        Block::Thinking,
                        json!({"type": "thinking", "thinking": "", "signature": ""}),
                        out,
                    )?;
                    if let Some(t) = r.get("text").and_then(Value::as_str) {
                        self.sink.event(
                            &json!({"type": "content_block_delta", "index": i, "delta": {"type": "thinking_delta", "thinking": t}}),
                            out,
                        )?;
                    }
                    if let Some(sig) = r.get("signature").and_then(Value::as_str) {
                        self.sink.event(
                            &json!({"type": "content_block_delta", "index": i, "delta": {"type": "signature_delta", "signature": sig}}),
                            out,
                        )?;
                    }
                }
            }
            "contentBlockStop" => {
                let i = index()?;
                if matches!(
                    self.blocks.get(i),
                    Some(Block::Text | Block::Thinking | Block::Tool)
                ) {
                    self.blocks[i] = Block::Closed;
                    self.sink
                        .event(&json!({"type": "content_block_stop", "index": i}), out)?;
                }
            }
            "messageStop" => {
                let s = ev
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::new("`messageStop` has no `stopReason`"))?;
                self.stop = Some(stop_reason(s)?);
            }
            "metadata" if self.stop.is_some() => self.end(ev.get("usage"), out)?,
            _ => {} // events added later carry nothing a client reads
        }
        Ok(())
    }
}

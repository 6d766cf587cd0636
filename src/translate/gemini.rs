//! Gemini on Vertex AI targets (`…/publishers/google/models/{id}:generateContent`,
//! `:streamGenerateContent?alt=sse`).
//!
//! Like `bedrock.rs`, through the Messages shape both ways. Gemini's function calls may
//! carry no id, and may carry a `thoughtSignature` that must come back on the next turn:
//! the tool-call id the client sees is made here (`toolu_gem_{unique}_{n}`) and holds the signature
//! after [`SIGNATURE_MARK`], so that a client replaying the call replays the signature.
//! A tool result names its call by id only; Gemini wants the function's name, which is
//! found in the assistant turn that made the call.

use super::{anthropic, bedrock, count, hub, sse, Api, Error, Options, ReplySpec, Request, Result};
use serde_json::{json, Map, Value};

const GEMINI: anthropic::Dialect = anthropic::Dialect {
    name: "Gemini",
    max_temperature: 2.0,
};

/// Between a made-up tool-call id and the thought signature it carries.
pub const SIGNATURE_MARK: &str = "__thought__";

pub fn request(
    front: Api,
    req: Map<String, Value>,
    model: Option<&str>,
    opts: &Options,
) -> Result<Request> {
    let (mut m, stream, reply) = match front {
        Api::OpenAiChat => anthropic::build(req, model, opts, &GEMINI)?,
        _ => bedrock::messages_request(req, model)?,
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
    let out = generate(m)?;
    Ok(Request {
        body: serde_json::to_vec(&Value::Object(out))
            .map_err(|e| Error::new(format!("writing the request: {e}")))?,
        stream,
        reply,
        model,
    })
}

fn generate(m: Map<String, Value>) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    let mut config = Map::new();
    let mut tools: Option<Vec<Value>> = None;
    let mut choice: Option<Value> = None;
    let mut names: Vec<(String, String)> = Vec::new(); // tool_use id → function name
    for (k, v) in m {
        match k.as_str() {
            "system" => {
                let text = match &v {
                    Value::String(s) => vec![json!({"text": s})],
                    Value::Array(b) => b
                        .iter()
                        .map(|b| {
                            b.get("text")
                                .and_then(Value::as_str)
                                .map(|t| json!({"text": t}))
                                .ok_or_else(|| Error::new("`system` may hold only text blocks"))
                        })
                        .collect::<Result<_>>()?,
                    _ => return Err(Error::new("`system` must be a string or text blocks")),
                };
                out.insert("systemInstruction".into(), json!({"parts": text}));
            }
            "messages" => {
                let Value::Array(turns) = v else {
                    return Err(Error::new("`messages` must be an array"));
                };
                out.insert("contents".into(), contents(turns, &mut names)?);
            }
            "max_tokens" => {
                config.insert("maxOutputTokens".into(), v);
            }
            "temperature" => {
                config.insert("temperature".into(), v);
            }
            "top_p" => {
                config.insert("topP".into(), v);
            }
            "top_k" => {
                config.insert("topK".into(), v);
            }
            "stop_sequences" => {
                config.insert("stopSequences".into(), v);
            }
            "thinking" => {
                if v.get("type").and_then(Value::as_str) == Some("enabled") {
                    let budget = count(v.get("budget_tokens")).unwrap_or(1024);
                    config.insert(
                        "thinkingConfig".into(),
                        json!({"thinkingBudget": budget, "includeThoughts": true}),
                    );
                }
            }
            "tools" => {
                let Value::Array(list) = v else {
                    return Err(Error::new("`tools` must be an array"));
                };
                let mut decls = Vec::with_capacity(list.len());
                for (i, t) in list.iter().enumerate() {
                    let name = t
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| Error::new(format!("tools[{i}] has no `name`")))?;
                    let Some(schema) = t.get("input_schema") else {
                        return Err(Error::new(format!(
                            "tools[{i}] (\"{name}\") is an Anthropic server tool, which Gemini does not run"
                        )));
                    };
                    let mut d = json!({"name": name, "parameters": schema_subset(schema)});
                    if let Some(desc) = t.get("description") {
                        d["description"] = desc.clone();
                    }
                    decls.push(d);
                }
                tools = Some(decls);
            }
            "tool_choice" => {
                choice = Some(match v.get("type").and_then(Value::as_str) {
                    Some("auto") => json!({"mode": "AUTO"}),
                    Some("any") => json!({"mode": "ANY"}),
                    Some("none") => json!({"mode": "NONE"}),
                    Some("tool") => {
                        let name = v.get("name").and_then(Value::as_str).ok_or_else(|| {
                            Error::new("`tool_choice` of type tool names no tool")
                        })?;
                        json!({"mode": "ANY", "allowedFunctionNames": [name]})
                    }
                    _ => return Err(Error::new("`tool_choice.type` is not known")),
                });
            }
            "metadata" | "service_tier" => {}
            other => {
                return Err(Error::new(format!(
                    "`{other}` cannot be translated to Gemini"
                )))
            }
        }
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    // As for Bedrock: a history with calls declares the functions it called.
    let tools = tools.or_else(|| {
        let mut seen: Vec<&str> = Vec::new();
        for (_, n) in &names {
            if !seen.contains(&n.as_str()) {
                seen.push(n);
            }
        }
        (!seen.is_empty()).then(|| {
            seen.iter()
                .map(|n| json!({"name": n, "parameters": {"type": "object"}}))
                .collect()
        })
    });
    if let Some(decls) = tools {
        out.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        if let Some(c) = choice {
            out.insert("toolConfig".into(), json!({"functionCallingConfig": c}));
        }
    }
    Ok(out)
}

/// A JSON Schema as the OpenAPI subset Gemini's `parameters` takes: the keywords it
/// refuses are dropped (they constrain, they do not describe the shape).
fn schema_subset(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "$schema" | "$id" | "additionalProperties" | "strict"
                    )
                })
                .map(|(k, v)| {
                    // `properties` maps names to schemas; its keys are not keywords.
                    let v = if k == "properties" {
                        match v {
                            Value::Object(p) => Value::Object(
                                p.iter()
                                    .map(|(n, s)| (n.clone(), schema_subset(s)))
                                    .collect(),
                            ),
                            other => other.clone(),
                        }
                    } else {
                        schema_subset(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(schema_subset).collect()),
        other => other.clone(),
    }
}

fn contents(turns: Vec<Value>, names: &mut Vec<(String, String)>) -> Result<Value> {
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::with_capacity(turns.len());
    for (i, t) in turns.into_iter().enumerate() {
        let at = |e: Error| Error::new(format!("messages[{i}]: {}", e.message));
        let role = match t.get("role").and_then(Value::as_str) {
            Some("user") => "user",
            Some("assistant") => "model",
            _ => return Err(at(Error::new("`role` must be user or assistant"))),
        };
        let parts = match t.get("content") {
            Some(Value::String(s)) => vec![json!({"text": s})],
            Some(Value::Array(b)) => {
                let mut list = Vec::with_capacity(b.len());
                for block in b {
                    if let Some(p) = part(block, names).map_err(at)? {
                        list.push(p);
                    }
                }
                list
            }
            _ => return Err(at(Error::new("`content` must be a string or blocks"))),
        };
        if parts.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((r, p)) if *r == role => p.extend(parts),
            _ => out.push((role, parts)),
        }
    }
    Ok(Value::Array(
        out.into_iter()
            .map(|(role, parts)| json!({"role": role, "parts": parts}))
            .collect(),
    ))
}

fn part(b: &Value, names: &mut Vec<(String, String)>) -> Result<Option<Value>> {
    let s = |k: &str| b.get(k).and_then(Value::as_str);
    Ok(Some(match s("type") {
        Some("text") => json!({"text": s("text").unwrap_or("")}),
        Some("image") => {
            let src = b
                .get("source")
                .ok_or_else(|| Error::new("an image has no `source`"))?;
            let g = |k: &str| src.get(k).and_then(Value::as_str).unwrap_or("");
            match g("type") {
                "base64" => json!({"inlineData": {"mimeType": g("media_type"), "data": g("data")}}),
                "url" => {
                    let url = g("url");
                    let path = url
                        .split(['?', '#'])
                        .next()
                        .unwrap_or(url)
                        .to_ascii_lowercase();
                    let mime = [(".png", "image/png"), (".jpg", "image/jpeg"), (".jpeg", "image/jpeg"),
                                (".gif", "image/gif"), (".webp", "image/webp")]
                        .iter()
                        .find(|(ext, _)| path.ends_with(ext))
                        .map(|(_, m)| *m)
                        .ok_or_else(|| Error::new(
                            "Gemini needs an image URL's type: use a URL ending in .png, .jpg, .gif or .webp, or a data URI",
                        ))?;
                    json!({"fileData": {"mimeType": mime, "fileUri": url}})
                }
                _ => return Err(Error::new("an image `source` must be base64 or a URL")),
            }
        }
        Some("tool_use") => {
            let id = s("id").ok_or_else(|| Error::new("a tool_use block has no `id`"))?;
            let name = s("name").ok_or_else(|| Error::new("a tool_use block has no `name`"))?;
            names.push((id.to_string(), name.to_string()));
            let mut p = json!({"functionCall": {"name": name, "args": b.get("input").cloned().unwrap_or_else(|| json!({}))}});
            if let Some((_, sig)) = id.split_once(SIGNATURE_MARK) {
                p["thoughtSignature"] = sig.into();
            }
            p
        }
        Some("tool_result") => {
            let id = s("tool_use_id")
                .ok_or_else(|| Error::new("a tool_result block has no `tool_use_id`"))?;
            let name = names
                .iter()
                .rev()
                .find(|(i, _)| i == id)
                .map(|(_, n)| n.clone())
                .ok_or_else(|| Error::new(format!(
                    "the tool result for \"{id}\" answers no earlier tool call (Gemini needs the function's name)"
                )))?;
            let text = match b.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(t)) => t.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match p.get("type").and_then(Value::as_str) {
                        Some("text") => Ok(p.get("text").and_then(Value::as_str).unwrap_or("")),
                        _ => Err(Error::new("a tool result may hold only text for Gemini")),
                    })
                    .collect::<Result<Vec<_>>>()?
                    .join("\n"),
                Some(_) => {
                    return Err(Error::new(
                        "a tool_result's `content` must be a string or blocks",
                    ))
                }
            };
            let key = if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                "error"
            } else {
                "content"
            };
            json!({"functionResponse": {"name": name, "response": {key: text}}})
        }
        Some("thinking") => match s("signature").filter(|sig| !sig.is_empty()) {
            Some(sig) => {
                json!({"text": s("thinking").unwrap_or(""), "thought": true, "thoughtSignature": sig})
            }
            None => return Ok(None),
        },
        Some("redacted_thinking") => return Ok(None),
        Some(other) => {
            return Err(Error::new(format!(
                "a `{other}` block cannot be translated to Gemini"
            )))
        }
        None => return Err(Error::new("a content block has no `type`")),
    }))
}

/// Gemini's finish reason as a Messages stop reason (`tool_use` when the answer holds
/// calls). An unknown or failed one is an error.
fn stop_reason(finish: &str, calls: bool) -> Result<&'static str> {
    Ok(match finish {
        "STOP" if calls => "tool_use",
        "STOP" => "end_turn",
        "MAX_TOKENS" => "max_tokens",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY"
        | "LANGUAGE" => "refusal",
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" => {
            return Err(Error::new(format!(
                "the model's function call was malformed (Gemini finished with {finish})"
            )))
        }
        other => {
            return Err(Error::new(format!(
                "the provider stopped for a reason the sidecar cannot translate: \"{other}\""
            )))
        }
    })
}

/// Gemini usage as Messages usage: Gemini's prompt count includes cached tokens and its
/// output count excludes thoughts; Messages' input excludes the cache, output includes
/// thinking.
fn usage(u: Option<&Value>) -> Value {
    let n = |k: &str| u.and_then(|u| count(u.get(k))).unwrap_or(0);
    let cached = n("cachedContentTokenCount");
    json!({
        "input_tokens": n("promptTokenCount").saturating_sub(cached),
        "output_tokens": n("candidatesTokenCount") + n("thoughtsTokenCount"),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    })
}

/// A tool-call id for a Gemini function call: Gemini's own, or one made up, with the
/// part's thought signature after the mark.
/// `prefix` is unique per answer (ids from different turns never collide).
fn call_id(part: &Value, prefix: &str, fallback: u64) -> String {
    let base = part
        .pointer("/functionCall/id")
        .and_then(Value::as_str)
        .filter(|i| !i.is_empty())
        .map_or_else(|| format!("{prefix}_{fallback}"), str::to_string);
    match part.get("thoughtSignature").and_then(Value::as_str) {
        Some(sig) if !sig.is_empty() => format!("{base}{SIGNATURE_MARK}{sig}"),
        _ => base,
    }
}

fn candidate(doc: &Value) -> Result<&Value> {
    if let Some(e) = doc.get("error") {
        let msg = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the provider failed");
        return Err(Error::new(format!(
            "the provider answered 2xx with an error: {msg}"
        )));
    }
    doc.pointer("/candidates/0").ok_or_else(|| {
        match doc
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
        {
            Some(r) => Error::new(format!("the provider blocked the prompt ({r})")),
            None => Error::new("the provider's answer has no `candidates`"),
        }
    })
}

/// A generateContent answer as the front's document.
pub fn response(front: Api, doc: Value, spec: &ReplySpec) -> Result<Value> {
    let c = candidate(&doc)?;
    let mut blocks = Vec::new();
    let mut calls = 0u64;
    let prefix = hub::message_id("toolu_gem_");
    for p in c
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if p.get("functionCall").is_some() {
            blocks.push(json!({
                "type": "tool_use",
                "id": call_id(p, &prefix, calls),
                "name": p.pointer("/functionCall/name").cloned().unwrap_or(Value::Null),
                "input": p.pointer("/functionCall/args").cloned().unwrap_or_else(|| json!({})),
            }));
            calls += 1;
        } else if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                blocks.push(json!({"type": "thinking", "thinking": t,
                    "signature": p.get("thoughtSignature").cloned().unwrap_or_else(|| "".into())}));
            } else {
                blocks.push(json!({"type": "text", "text": t}));
            }
        }
    }
    let finish = c
        .get("finishReason")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::new("the provider's answer has no `finishReason`"))?;
    let msg = json!({
        "id": doc.get("responseId").and_then(Value::as_str).map_or_else(|| hub::message_id("msg_gem_"), |i| format!("msg_gem_{i}")),
        "type": "message",
        "role": "assistant",
        "model": spec.model,
        "content": blocks,
        "stop_reason": stop_reason(finish, calls > 0)?,
        "stop_sequence": null,
        "usage": usage(doc.get("usageMetadata")),
    });
    hub::document(front, msg, spec)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Thinking,
}

/// A streamGenerateContent (SSE) answer told as the front's stream. Gemini sends no
/// end event: the message ends with the body, after a chunk with a finish reason.
pub struct Stream {
    reader: sse::Reader,
    sink: hub::Sink,
    model: String,
    started: bool,
    open: Open,
    next_block: u64,
    calls: u64,
    call_prefix: String,
    finish: Option<String>,
    usage: Option<Value>,
}

impl Stream {
    pub fn new(front: Api, spec: ReplySpec) -> Stream {
        Stream {
            reader: sse::Reader::default(),
            model: spec.model.clone(),
            sink: hub::Sink::new(front, spec),
            started: false,
            open: Open::None,
            next_block: 0,
            calls: 0,
            call_prefix: hub::message_id("toolu_gem_"),
            finish: None,
            usage: None,
        }
    }

    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let mut reader = std::mem::take(&mut self.reader);
        let r = reader.feed(chunk, |e| self.chunk(e.data, out));
        self.reader = reader;
        r
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let mut reader = std::mem::take(&mut self.reader);
        let r = reader.finish(|e| self.chunk(e.data, out));
        self.reader = reader;
        r?;
        if self.sink.failed() {
            return Ok(());
        }
        let Some(finish) = self.finish.take() else {
            return Err(Error::new(
                "the provider's stream ended before a finish reason",
            ));
        };
        self.close(out)?;
        let stop = stop_reason(&finish, self.calls > 0)?;
        let usage = usage(self.usage.as_ref());
        self.sink.event(
            &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": usage}),
            out,
        )?;
        self.sink.event(&json!({"type": "message_stop"}), out)?;
        self.sink.end()
    }

    fn close(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.open != Open::None {
            self.open = Open::None;
            self.sink.event(
                &json!({"type": "content_block_stop", "index": self.next_block - 1}),
                out,
            )?;
        }
        Ok(())
    }

    fn open(&mut self, kind: Open, block: Value, out: &mut Vec<u8>) -> Result<u64> {
        if self.open != kind {
            self.close(out)?;
            self.open = kind;
            self.next_block += 1;
            self.sink.event(
                &json!({"type": "content_block_start", "index": self.next_block - 1, "content_block": block}),
                out,
            )?;
        }
        Ok(self.next_block - 1)
    }

    fn chunk(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.sink.failed() || data.trim_ascii() == b"[DONE]" {
            return Ok(());
        }
        let doc: Value = serde_json::from_slice(data).map_err(|e| {
            Error::new(format!(
                "the provider sent a stream event that is not JSON: {e}"
            ))
        })?;
        if let Some(e) = doc.get("error") {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the provider's stream failed");
            return self.sink.event(&hub::error_event("api_error", msg), out);
        }
        if !self.started {
            self.started = true;
            let id = doc
                .get("responseId")
                .and_then(Value::as_str)
                .map_or_else(|| hub::message_id("msg_gem_"), |i| format!("msg_gem_{i}"));
            self.sink.event(&hub::message_start(id, &self.model), out)?;
        }
        if let Some(u) = doc.get("usageMetadata") {
            self.usage = Some(u.clone());
        }
        let Some(c) = doc.pointer("/candidates/0") else {
            // A usage-only chunk, or a blocked prompt.
            if let Some(r) = doc
                .pointer("/promptFeedback/blockReason")
                .and_then(Value::as_str)
            {
                self.finish = Some(if r == "SAFETY" {
                    "SAFETY".into()
                } else {
                    "PROHIBITED_CONTENT".into()
                });
            }
            return Ok(());
        };
        for p in c
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if p.get("functionCall").is_some() {
                self.close(out)?;
                let id = call_id(p, &self.call_prefix, self.calls);
                self.calls += 1;
                let i = self.next_block;
                self.next_block += 1;
                let name = p
                    .pointer("/functionCall/name")
                    .cloned()
                    .unwrap_or(Value::Null);
                let args = p
                    .pointer("/functionCall/args")
                    .filter(|a| !a.is_null())
                    .map_or_else(|| "{}".to_string(), Value::to_string);
                self.sink.event(
                    &json!({"type": "content_block_start", "index": i,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                    out,
                )?;
                self.sink.event(
                    &json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": args}}),
                    out,
                )?;
                self.sink
                    .event(&json!({"type": "content_block_stop", "index": i}), out)?;
            } else if let Some(t) = p.get("text").and_then(Value::as_str) {
                let sig = p.get("thoughtSignature").and_then(Value::as_str);
                if p.get("thought").and_then(Value::as_bool) == Some(true) {
                    let i = self.open(
                        Open::Thinking,
                        json!({"type": "thinking", "thinking": "", "signature": ""}),
                        out,
                    )?;
                    if !t.is_empty() {
                        self.sink.event(
                            &json!({"type": "content_block_delta", "index": i,
                            "delta": {"type": "thinking_delta", "thinking": t}}),
                            out,
                        )?;
                    }
                    if let Some(sig) = sig {
                        self.sink.event(
                            &json!({"type": "content_block_delta", "index": i,
                            "delta": {"type": "signature_delta", "signature": sig}}),
                            out,
                        )?;
                    }
                } else if !t.is_empty() {
                    let i = self.open(Open::Text, json!({"type": "text", "text": ""}), out)?;
                    self.sink.event(
                        &json!({"type": "content_block_delta", "index": i,
                        "delta": {"type": "text_delta", "text": t}}),
                        out,
                    )?;
                }
            }
        }
        if let Some(f) = c.get("finishReason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
        }
        Ok(())
    }
}

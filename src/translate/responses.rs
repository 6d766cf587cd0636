//! OpenAI Responses API clients (`POST …/responses`) on a route whose clients speak
//! OpenAI: the request is told as a Chat Completions request (then translated on to the
//! target like any Chat request, or sent to an OpenAI-compatible target that has no
//! Responses API), and the Chat answer, JSON or stream, is told back as a Response.
//!
//! Stateless only: `previous_response_id` and server-side `conversation`s need the
//! provider to keep the conversation, which a translated target does not.

use super::{count, now_secs, sse, Error, Result};
use serde_json::{json, Map, Value};

/// A Responses request as a Chat Completions request.
pub fn to_chat(req: Map<String, Value>) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    let mut messages = Vec::new();
    for (k, v) in &req {
        match k.as_str() {
            "model" | "temperature" | "top_p" | "parallel_tool_calls" | "user" | "metadata"
            | "store" | "stream" | "service_tier" | "truncation" | "top_logprobs" => {}
            "instructions" | "input" | "tools" | "tool_choice" | "max_output_tokens" | "reasoning"
            | "text" | "include" | "stream_options" => {}
            "previous_response_id" | "conversation" if !v.is_null() => {
                return Err(Error::new(format!(
                    "`{k}` needs the provider to keep the conversation, which a translated target does not; send the whole conversation in `input`"
                )))
            }
            "previous_response_id" | "conversation" => {}
            "background" if v == &Value::Bool(true) => {
                return Err(Error::new("`background` responses cannot be translated"))
            }
            "background" | "prompt_cache_key" | "safety_identifier" => {}
            other => {
                return Err(Error::new(format!(
                    "`{other}` cannot be translated from the Responses API"
                )))
            }
        }
    }
    if let Some(m) = req.get("model") {
        out.insert("model".into(), m.clone());
    }
    if let Some(i) = req.get("instructions").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": i}));
    }
    match req.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, &mut messages)
                    .map_err(|e| Error::new(format!("input[{i}]: {}", e.message)))?;
            }
        }
        _ => return Err(Error::new("`input` must be a string or an array of items")),
    }
    out.insert("messages".into(), Value::Array(messages));
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("user", "user"),
        ("max_output_tokens", "max_completion_tokens"),
    ] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(e) = req
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|v| !v.is_null())
    {
        out.insert("reasoning_effort".into(), e.clone());
    }
    match req
        .get("text")
        .and_then(|t| t.pointer("/format/type"))
        .and_then(Value::as_str)
    {
        None | Some("text") => {}
        Some("json_object") => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some("json_schema") => {
            let f = &req["text"]["format"];
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {
                    "name": f.get("name").cloned().unwrap_or_else(|| "response".into()),
                    "schema": f.get("schema").cloned().unwrap_or_else(|| json!({})),
                    "strict": f.get("strict").cloned().unwrap_or(Value::Bool(false)),
                }}),
            );
        }
        Some(other) => {
            return Err(Error::new(format!(
                "`text.format` \"{other}\" cannot be translated"
            )))
        }
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let mut list = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            match t.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let mut f = json!({"name": t.get("name").cloned().unwrap_or(Value::Null)});
                    for k in ["description", "parameters", "strict"] {
                        if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                            f[k] = v.clone();
                        }
                    }
                    list.push(json!({"type": "function", "function": f}));
                }
                other => {
                    return Err(Error::new(format!(
                        "tools[{i}]: a `{}` tool is one of OpenAI's hosted tools, which a translated target does not run",
                        other.unwrap_or("?")
                    )))
                }
            }
        }
        if !list.is_empty() {
            out.insert("tools".into(), Value::Array(list));
        }
    }
    match req.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("tool_choice".into(), s.clone().into());
        }
        Some(c) => match c.get("name").and_then(Value::as_str) {
            Some(name) if c["type"] == "function" => {
                out.insert(
                    "tool_choice".into(),
                    json!({"type": "function", "function": {"name": name}}),
                );
            }
            _ => return Err(Error::new("`tool_choice` names no function")),
        },
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), true.into());
        // The usage chunk feeds `response.completed`'s usage.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(out)
}

/// One input item as chat messages (a run of function calls becomes one assistant
/// message with several `tool_calls`).
fn input_item(item: &Value, messages: &mut Vec<Value>) -> Result<()> {
    let ty = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match ty {
        "message" => {
            let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
            if !matches!(role, "user" | "assistant" | "system" | "developer") {
                return Err(Error::new(format!("unknown role \"{role}\"")));
            }
            let content = match item.get("content") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => {
                    let mut out = Vec::with_capacity(parts.len());
                    for p in parts {
                        out.push(content_part(p)?);
                    }
                    if role == "assistant" {
                        // Chat assistant content is text only: join it.
                        Value::String(
                            out.iter()
                                .filter_map(|p| p.get("text").and_then(Value::as_str))
                                .collect::<Vec<_>>()
                                .join(""),
                        )
                    } else {
                        Value::Array(out)
                    }
                }
                _ => return Err(Error::new("a message needs `content`")),
            };
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call = json!({
                "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": item.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": item.get("arguments").cloned().unwrap_or_else(|| "{}".into()),
                }
            });
            match messages.last_mut() {
                Some(m) if m["role"] == "assistant" && m.get("tool_calls").is_some() => {
                    if let Some(list) = m["tool_calls"].as_array_mut() {
                        list.push(call);
                    }
                }
                Some(m) if m["role"] == "assistant" => {
                    m["tool_calls"] = json!([call]);
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            messages.push(json!({
                "role": "tool",
                "tool_call_id": item.get("call_id").cloned().unwrap_or(Value::Null),
                "content": output,
            }));
        }
        // The model's own reasoning from an earlier turn: a translated target cannot
        // read OpenAI's encrypted reasoning, and the answer does not depend on it.
        "reasoning" => {}
        other => {
            return Err(Error::new(format!(
                "an `{other}` item cannot be translated"
            )))
        }
    }
    Ok(())
}

fn content_part(p: &Value) -> Result<Value> {
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            Ok(json!({"type": "text", "text": p.get("text").cloned().unwrap_or_else(|| "".into())}))
        }
        Some("input_image") => match p.get("image_url").and_then(Value::as_str) {
            Some(url) => Ok(json!({"type": "image_url", "image_url": {"url": url}})),
            None => Err(Error::new(
                "an `input_image` needs `image_url` (file ids cannot be translated)",
            )),
        },
        Some("refusal") => Ok(
            json!({"type": "text", "text": p.get("refusal").cloned().unwrap_or_else(|| "".into())}),
        ),
        Some(other) => Err(Error::new(format!(
            "an `{other}` part cannot be translated"
        ))),
        None => Err(Error::new("a content part has no `type`")),
    }
}

/// Chat usage as Responses usage.
fn usage(u: &Value) -> Value {
    let input = count(u.get("prompt_tokens")).unwrap_or(0);
    let output = count(u.get("completion_tokens")).unwrap_or(0);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": count(u.pointer("/prompt_tokens_details/cached_tokens")).unwrap_or(0)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": count(u.pointer("/completion_tokens_details/reasoning_tokens")).unwrap_or(0)},
        "total_tokens": count(u.get("total_tokens")).unwrap_or(input + output),
    })
}

/// A Response object around `output`.
fn response(
    (id, created): (&str, u64),
    model: &str,
    status: &str,
    finish: Option<&str>,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    let incomplete = match finish {
        Some("length") => json!({"reason": "max_output_tokens"}),
        Some("content_filter") => json!({"reason": "content_filter"}),
        _ => Value::Null,
    };
    json!({
        "id": id, "object": "response", "created_at": created, "status": status,
        "model": model, "output": output, "incomplete_details": incomplete, "error": null,
        "usage": usage, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "previous_response_id": null, "store": false, "truncation": "disabled",
        "text": {"format": {"type": "text"}}, "reasoning": {"effort": null, "summary": null},
        "metadata": {}, "instructions": null, "temperature": null, "top_p": null,
        "max_output_tokens": null, "user": null,
    })
}

fn status_of(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length" | "content_filter") => "incomplete",
        _ => "completed",
    }
}

fn response_id(chat_id: Option<&str>) -> String {
    format!(
        "resp_{}",
        chat_id.unwrap_or("sidecar").trim_start_matches("chatcmpl-")
    )
}

/// A Chat completion as a Response.
pub fn from_chat(doc: Value) -> Result<Value> {
    let choice = doc
        .pointer("/choices/0")
        .ok_or_else(|| Error::new("the answer has no `choices`"))?;
    let m = &choice["message"];
    let id = response_id(doc.get("id").and_then(Value::as_str));
    let mut output = Vec::new();
    if let Some(r) = m
        .get("reasoning_content")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        output.push(
            json!({"type": "reasoning", "id": format!("rs_{}", &id[5..]),
            "summary": [{"type": "summary_text", "text": r}]}),
        );
    }
    if let Some(t) = m
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        output.push(message_item(&format!("msg_{}", &id[5..]), t, "completed"));
    }
    for c in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let call_id = c.get("id").and_then(Value::as_str).unwrap_or("");
        output.push(
            json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id,
            "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "arguments": c.pointer("/function/arguments").cloned().unwrap_or_else(|| "{}".into()),
            "status": "completed"}),
        );
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let model = doc.get("model").and_then(Value::as_str).unwrap_or("");
    Ok(response(
        (&id, now_secs()),
        model,
        status_of(finish),
        finish,
        output,
        doc.get("usage").map_or(Value::Null, usage),
    ))
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

/// One output item being streamed.
enum Item {
    Text {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        args: String,
        chat_index: u64,
    },
}

/// Chat chunks told as Responses events.
pub struct Stream {
    reader: sse::Reader,
    started: bool,
    id: String,
    created: u64,
    model: String,
    seq: u64,
    items: Vec<Item>,
    /// The item still receiving deltas (an index into `items`).
    open: Option<usize>,
    finish: Option<String>,
    usage: Value,
    done: bool,
    failed: bool,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            reader: sse::Reader::default(),
            started: false,
            id: String::new(),
            created: 0,
            model: String::new(),
            seq: 0,
            items: Vec::new(),
            open: None,
            finish: None,
            usage: Value::Null,
            done: false,
            failed: false,
        }
    }
}

impl Stream {
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
        if self.failed || self.done {
            return Ok(());
        }
        if self.finish.is_none() {
            return Err(Error::new(
                "the provider's stream ended before its finish reason",
            ));
        }
        self.end(out);
        Ok(())
    }

    fn event(&mut self, ty: &str, mut v: Value, out: &mut Vec<u8>) {
        v["type"] = ty.into();
        v["sequence_number"] = self.seq.into();
        self.seq += 1;
        sse::named(ty, &v, out);
    }

    fn shell(&self, status: &str, output: Vec<Value>, usage: Value) -> Value {
        response(
            (&self.id, self.created),
            &self.model,
            status,
            self.finish.as_deref(),
            output,
            usage,
        )
    }

    fn item_json(&self, i: usize, status: &str) -> Value {
        match &self.items[i] {
            Item::Text { id, text } => message_item(id, text, status),
            Item::Call {
                id,
                call_id,
                name,
                args,
                ..
            } => json!({"type": "function_call", "id": id,
                "call_id": call_id, "name": name, "arguments": args, "status": status}),
        }
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let Some(i) = self.open.take() else { return };
        match &self.items[i] {
            Item::Text { id, text } => {
                let (id, text) = (id.clone(), text.clone());
                self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "text": text}),
                    out,
                );
                self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": []}}),
                    out,
                );
            }
            Item::Call { id, args, .. } => {
                let (id, args) = (id.clone(), args.clone());
                self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": i, "arguments": args}),
                    out,
                );
            }
        }
        let item = self.item_json(i, "completed");
        self.event(
            "response.output_item.done",
            json!({"output_index": i, "item": item}),
            out,
        );
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.close(out);
        let output: Vec<Value> = (0..self.items.len())
            .map(|i| self.item_json(i, "completed"))
            .collect();
        let status = status_of(self.finish.as_deref());
        let u = if self.usage.is_null() {
            Value::Null
        } else {
            usage(&self.usage)
        };
        let r = self.shell(status, output, u);
        let ty = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.event(ty, json!({"response": r}), out);
        self.done = true;
    }

    fn chunk(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.done || self.failed {
            return Ok(());
        }
        if data.trim_ascii() == b"[DONE]" {
            if self.finish.is_none() {
                return Err(Error::new(
                    "the provider's stream ended before its finish reason",
                ));
            }
            self.end(out);
            return Ok(());
        }
        let c: Value = serde_json::from_slice(data).map_err(|e| {
            Error::new(format!(
                "the provider sent a stream event that is not JSON: {e}"
            ))
        })?;
        if let Some(e) = c.get("error") {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the provider's stream failed");
            let code = e.get("code").cloned().unwrap_or(Value::Null);
            self.event(
                "error",
                json!({"code": code, "message": msg, "param": null}),
                out,
            );
            self.failed = true;
            return Ok(());
        }
        if !self.started {
            self.started = true;
            self.id = response_id(c.get("id").and_then(Value::as_str));
            self.created = now_secs();
            self.model = c
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let r = self.shell("in_progress", Vec::new(), Value::Null);
            self.event("response.created", json!({"response": r.clone()}), out);
            self.event("response.in_progress", json!({"response": r}), out);
        }
        if let Some(u) = c.get("usage").filter(|u| u.is_object()) {
            self.usage = u.clone();
        }
        let Some(choice) = c.pointer("/choices/0") else {
            return Ok(());
        };
        let d = &choice["delta"];
        if let Some(t) = d
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            let i = match self.open {
                Some(i) if matches!(self.items[i], Item::Text { .. }) => i,
                _ => {
                    self.close(out);
                    let i = self.items.len();
                    let id = format!("msg_{}_{i}", &self.id[5..]);
                    self.items.push(Item::Text {
                        id: id.clone(),
                        text: String::new(),
                    });
                    self.open = Some(i);
                    let item = self.item_json(i, "in_progress");
                    let mut item = item;
                    item["content"] = json!([]);
                    self.event(
                        "response.output_item.added",
                        json!({"output_index": i, "item": item}),
                        out,
                    );
                    self.event(
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": i, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []}}),
                        out,
                    );
                    i
                }
            };
            let id = match &mut self.items[i] {
                Item::Text { id, text } => {
                    text.push_str(t);
                    id.clone()
                }
                Item::Call { .. } => unreachable!("the open item is text"),
            };
            self.event(
                "response.output_text.delta",
                json!({"item_id": id, "output_index": i, "content_index": 0, "delta": t}),
                out,
            );
        }
        for tc in d
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let idx = count(tc.get("index")).unwrap_or(0);
            let existing = self
                .items
                .iter()
                .position(|it| matches!(it, Item::Call { chat_index, .. } if *chat_index == idx));
            let i = match existing {
                Some(i) => {
                    if self.open != Some(i) {
                        return Err(Error::new(format!(
                            "the provider sent arguments for tool call {idx} after another had begun"
                        )));
                    }
                    i
                }
                None => {
                    self.close(out);
                    let i = self.items.len();
                    let call_id = tc
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let name = tc
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    self.items.push(Item::Call {
                        id: format!("fc_{call_id}"),
                        call_id,
                        name,
                        args: String::new(),
                        chat_index: idx,
                    });
                    self.open = Some(i);
                    let item = self.item_json(i, "in_progress");
                    self.event(
                        "response.output_item.added",
                        json!({"output_index": i, "item": item}),
                        out,
                    );
                    i
                }
            };
            if let Some(a) = tc
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                let id = match &mut self.items[i] {
                    Item::Call { id, args, .. } => {
                        args.push_str(a);
                        id.clone()
                    }
                    Item::Text { .. } => unreachable!("the open item is a call"),
                };
                self.event(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": i, "delta": a}),
                    out,
                );
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
        }
        Ok(())
    }
}

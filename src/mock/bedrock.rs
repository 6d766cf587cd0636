//! Amazon Bedrock: `/model/{id}/converse`, `/converse-stream`, `/invoke` and
//! `/invoke-with-response-stream` (the streaming ones in AWS event-stream framing).
//! Converse requests are checked against the documented request shape, with
//! Bedrock's own error messages; `x-mock-tool-calls: N` answers with N tool calls.

use super::{
    estimate_tokens, event_stream_message, event_stream_response, halves, json_response,
    percent_decode, word, Body,
};
use http::{Response, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// What one answer is made of (from the server's options and the request's headers).
pub(super) struct Turn {
    pub n: u64,
    pub chunks: usize,
    pub interval: Duration,
    pub stall_after: Option<usize>,
    /// `x-mock-tool-calls`.
    pub calls: Option<u64>,
}

/// Bedrock's error body: `{"message"}`, the kind in `x-amzn-errortype`.
fn error(status: u16, kind: &'static str, message: &str) -> Response<Body> {
    let mut r = json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        &json!({"message": message}),
    );
    r.headers_mut()
        .insert("x-amzn-errortype", http::HeaderValue::from_static(kind));
    r
}

pub(super) fn answer(route: &str, body: &[u8], t: &Turn) -> Response<Body> {
    let rest = &route["/model/".len()..];
    let Some((model, op)) = rest.rsplit_once('/') else {
        return error(
            404,
            "UnknownOperationException",
            "Unknown Bedrock operation.",
        );
    };
    let model = percent_decode(model);
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return error(
            400,
            "SerializationException",
            "Unable to parse the request body as JSON.",
        );
    };
    if op.starts_with("converse") {
        if let Err(m) = check_converse(&req) {
            return error(400, "ValidationException", &m);
        }
    }
    let input = estimate_tokens(&req["messages"]) + req.get("system").map_or(0, estimate_tokens);
    let cap = req["inferenceConfig"]["maxTokens"]
        .as_u64()
        .or_else(|| req["max_tokens"].as_u64());
    let tokens = cap.map_or(t.chunks, |c| (c as usize).min(t.chunks));
    let stop = if cap.is_some_and(|c| (c as usize) < t.chunks) {
        "max_tokens"
    } else {
        "end_turn"
    };
    let text: String = (0..tokens).map(word).collect();
    let calls = tool_calls(&req, t.calls);
    let usage = |out: usize| json!({"inputTokens": input, "outputTokens": out, "totalTokens": input + out as u64});
    match op {
        "converse" if !calls.is_empty() => {
            let mut content = vec![json!({"text": "Let me check."})];
            for (i, (name, args)) in calls.iter().enumerate() {
                content.push(json!({"toolUse": {"toolUseId": format!("tooluse_mock{}_{i}", t.n), "name": name, "input": args}}));
            }
            json_response(
                StatusCode::OK,
                &json!({"output": {"message": {"role": "assistant", "content": content}},
                        "stopReason": "tool_use", "usage": usage(10 + calls.len()), "metrics": {"latencyMs": 42}}),
            )
        }
        "converse" => json_response(
            StatusCode::OK,
            &json!({
                "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                "stopReason": stop,
                "usage": usage(tokens),
                "metrics": {"latencyMs": 42}
            }),
        ),
        "converse-stream" => {
            let mut events = vec![event_stream_message(
                "messageStart",
                &json!({"role": "assistant"}),
            )];
            let (stop, out) = if calls.is_empty() {
                for i in 0..tokens {
                    events.push(event_stream_message(
                        "contentBlockDelta",
                        &json!({"contentBlockIndex": 0, "delta": {"text": word(i)}}),
                    ));
                }
                events.push(event_stream_message(
                    "contentBlockStop",
                    &json!({"contentBlockIndex": 0}),
                ));
                (stop, tokens)
            } else {
                events.push(event_stream_message(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 0, "delta": {"text": "Let me check."}}),
                ));
                events.push(event_stream_message(
                    "contentBlockStop",
                    &json!({"contentBlockIndex": 0}),
                ));
                for (i, (name, args)) in calls.iter().enumerate() {
                    let b = i + 1;
                    events.push(event_stream_message("contentBlockStart", &json!({"contentBlockIndex": b,
                        "start": {"toolUse": {"toolUseId": format!("tooluse_mock{}_{i}", t.n), "name": name}}})));
                    let text = args.to_string();
                    for part in halves(&text) {
                        events.push(event_stream_message(
                            "contentBlockDelta",
                            &json!({"contentBlockIndex": b, "delta": {"toolUse": {"input": part}}}),
                        ));
                    }
                    events.push(event_stream_message(
                        "contentBlockStop",
                        &json!({"contentBlockIndex": b}),
                    ));
                }
                ("tool_use", 10 + calls.len())
            };
            events.push(event_stream_message(
                "messageStop",
                &json!({"stopReason": stop}),
            ));
            events.push(event_stream_message(
                "metadata",
                &json!({"usage": usage(out), "metrics": {"latencyMs": 42}}),
            ));
            event_stream_response(events, t.interval, t.stall_after)
        }
        // Anthropic models on Bedrock take and return the Messages API shape.
        "invoke" => json_response(
            StatusCode::OK,
            &json!({
                "id": format!("msg_bdrk_mock{}", t.n), "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": stop, "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": tokens}
            }),
        ),
        "invoke-with-response-stream" => {
            use base64::Engine;
            let chunk = |v: Value| {
                let b = base64::engine::general_purpose::STANDARD.encode(v.to_string());
                event_stream_message("chunk", &json!({"bytes": b}))
            };
            let mut events = vec![chunk(json!({"type": "message_start", "message": {
                "id": format!("msg_bdrk_mock{}", t.n), "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "usage": {"input_tokens": input, "output_tokens": 1}}}))];
            for i in 0..tokens {
                events.push(chunk(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word(i)}})));
            }
            events.push(chunk(json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": tokens}})));
            events.push(chunk(json!({"type": "message_stop",
                "amazon-bedrock-invocationMetrics": {"inputTokenCount": input, "outputTokenCount": tokens}})));
            event_stream_response(events, t.interval, t.stall_after)
        }
        _ => error(
            404,
            "UnknownOperationException",
            "Unknown Bedrock operation.",
        ),
    }
}

/// The calls to make: `wanted` of them (one when a tool is forced), the tools in turn,
/// arguments from each schema's properties.
fn tool_calls(req: &Value, wanted: Option<u64>) -> Vec<(String, Value)> {
    let Some(tools) = req["toolConfig"]["tools"]
        .as_array()
        .filter(|t| !t.is_empty())
    else {
        return Vec::new();
    };
    let choice = &req["toolConfig"]["toolChoice"];
    let forced = choice.get("any").is_some() || choice.get("tool").is_some();
    let n = wanted.map_or(usize::from(forced), |n| n as usize);
    (0..n)
        .map(|i| {
            let spec = match choice["tool"]["name"].as_str() {
                Some(f) => tools
                    .iter()
                    .find(|t| t["toolSpec"]["name"] == f)
                    .unwrap_or(&tools[0]),
                None => &tools[i % tools.len()],
            };
            let spec = &spec["toolSpec"];
            let mut args = serde_json::Map::new();
            if let Some(p) = spec["inputSchema"]["json"]["properties"].as_object() {
                for k in p.keys() {
                    args.insert(k.clone(), format!("mock-{k}-{i}").into());
                }
            }
            (
                spec["name"].as_str().unwrap_or("tool").to_string(),
                Value::Object(args),
            )
        })
        .collect()
}

/// Checks a Converse request as Bedrock does; the message names the first problem, in
/// Bedrock's words where they are known.
pub fn check_converse(req: &Value) -> Result<(), String> {
    const TOP: &[&str] = &[
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "guardrailConfig",
        "additionalModelRequestFields",
        "promptVariables",
        "additionalModelResponseFieldPaths",
        "requestMetadata",
        "performanceConfig",
    ];
    let Some(o) = req.as_object() else {
        return Err("The request body must be a JSON object.".into());
    };
    if let Some(k) = o.keys().find(|k| !TOP.contains(&k.as_str())) {
        return Err(format!("Malformed input request: extraneous key [{k}] is not permitted, please reformat your input and try again."));
    }
    if let Some(ic) = req.get("inferenceConfig") {
        let Some(ic) = ic.as_object() else {
            return Err("inferenceConfig must be an object.".into());
        };
        for (k, v) in ic {
            let ok = match k.as_str() {
                "maxTokens" => v.as_u64().is_some_and(|m| m >= 1),
                "temperature" | "topP" => v.as_f64().is_some_and(|f| (0.0..=1.0).contains(&f)),
                "stopSequences" => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
                _ => false,
            };
            if !ok {
                return Err(format!("The value at inferenceConfig.{k} is not valid."));
            }
        }
    }
    if let Some(sys) = req.get("system") {
        if !sys.as_array().is_some_and(|a| {
            a.iter()
                .all(|b| b["text"].is_string() || b.get("cachePoint").is_some())
        }) {
            return Err("system must be a list of SystemContentBlock (text or cachePoint).".into());
        }
    }
    let mut tool_names: Vec<&str> = Vec::new();
    if let Some(tc) = req.get("toolConfig") {
        let Some(tools) = tc["tools"].as_array().filter(|t| !t.is_empty()) else {
            return Err("toolConfig.tools must hold at least one tool.".into());
        };
        for (i, t) in tools.iter().enumerate() {
            if t.get("cachePoint").is_some() {
                continue;
            }
            let s = &t["toolSpec"];
            if !s["name"].is_string() || !s["inputSchema"]["json"].is_object() {
                return Err(format!(
                    "toolConfig.tools.{i}.toolSpec needs a name and inputSchema.json."
                ));
            }
            tool_names.push(s["name"].as_str().unwrap_or_default());
        }
        if let Some(c) = tc.get("toolChoice") {
            let ok = c.get("auto").is_some()
                || c.get("any").is_some()
                || c["tool"]["name"]
                    .as_str()
                    .is_some_and(|n| tool_names.contains(&n));
            if !ok {
                return Err(
                    "toolConfig.toolChoice must be auto, any, or a tool named in toolConfig.tools."
                        .into(),
                );
            }
        }
    }
    let Some(msgs) = req["messages"].as_array().filter(|m| !m.is_empty()) else {
        return Err("A conversation must start with a user message. Try again with a conversation that starts with a user message.".into());
    };
    let mut open_calls: Vec<&str> = Vec::new();
    let mut any_tool_block = false;
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        let want = if i % 2 == 0 { "user" } else { "assistant" };
        if role != want {
            return Err(if i == 0 {
                "A conversation must start with a user message. Try again with a conversation that starts with a user message.".into()
            } else {
                "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.".into()
            });
        }
        let Some(content) = m["content"].as_array().filter(|c| !c.is_empty()) else {
            return Err(format!(
                "messages.{i}.content must hold at least one ContentBlock."
            ));
        };
        let mut answered: Vec<&str> = Vec::new();
        for (j, b) in content.iter().enumerate() {
            let Some((kind, v)) = b
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.iter().next())
            else {
                return Err(format!(
                    "messages.{i}.content.{j} must set exactly one member of ContentBlock."
                ));
            };
            match kind.as_str() {
                "text" if v.is_string() => {}
                "cachePoint" => {}
                "image" => {
                    let f = v["format"].as_str().unwrap_or("");
                    if !["png", "jpeg", "gif", "webp"].contains(&f) {
                        return Err(format!(
                            "messages.{i}.content.{j}.image.format must be png, jpeg, gif or webp."
                        ));
                    }
                    let bytes = v["source"]["bytes"].as_str().unwrap_or("");
                    use base64::Engine;
                    if bytes.is_empty()
                        || base64::engine::general_purpose::STANDARD
                            .decode(bytes)
                            .is_err()
                    {
                        return Err(format!(
                            "messages.{i}.content.{j}.image.source.bytes must be base64."
                        ));
                    }
                }
                "toolUse" if role == "assistant" => {
                    any_tool_block = true;
                    if !v["toolUseId"].is_string()
                        || !v["name"].is_string()
                        || !v["input"].is_object()
                    {
                        return Err(format!("messages.{i}.content.{j}.toolUse needs toolUseId, name and an input object."));
                    }
                    open_calls.push(v["toolUseId"].as_str().unwrap_or_default());
                }
                "toolResult" if role == "user" => {
                    any_tool_block = true;
                    let id = v["toolUseId"].as_str().unwrap_or("");
                    if !open_calls.contains(&id) {
                        return Err(format!("messages.{i}.content.{j}.toolResult.toolUseId {id} does not match a toolUse in the previous assistant turn."));
                    }
                    answered.push(id);
                    if v["content"].as_array().is_none_or(|c| c.is_empty()) {
                        return Err(format!(
                            "messages.{i}.content.{j}.toolResult.content must not be empty."
                        ));
                    }
                    if let Some(s) = v.get("status") {
                        if s != "success" && s != "error" {
                            return Err(format!("messages.{i}.content.{j}.toolResult.status must be success or error."));
                        }
                    }
                }
                "reasoningContent" if role == "assistant" => {}
                "document" | "video" | "guardContent" => {}
                _ => {
                    return Err(format!(
                        "messages.{i}.content.{j}: {kind} is not valid here."
                    ))
                }
            }
        }
        if role == "user" && !open_calls.is_empty() {
            if let Some(missing) = open_calls.iter().find(|c| !answered.contains(c)) {
                return Err(format!("Expected toolResult blocks at messages.{i}.content for the following Ids: {missing}"));
            }
            open_calls.clear();
        }
    }
    if any_tool_block && req.get("toolConfig").is_none() {
        return Err("The toolConfig field must be defined when using toolUse and toolResult content blocks.".into());
    }
    Ok(())
}

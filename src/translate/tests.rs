//! One test per mapping rule of docs/unified-api.md, and the stream properties: any
//! split of the provider's bytes gives the same translated stream.

use super::*;
use serde_json::json;

fn translated(front: Api, target: Api, req: &Value) -> Result<Request> {
    request(
        front,
        target,
        req.to_string().as_bytes(),
        None,
        &Options::default(),
    )
}

fn to_anthropic(req: Value) -> Value {
    let r = translated(Api::OpenAiChat, Api::AnthropicMessages, &req).unwrap();
    serde_json::from_slice(&r.body).unwrap()
}

fn to_anthropic_err(req: Value) -> String {
    translated(Api::OpenAiChat, Api::AnthropicMessages, &req)
        .unwrap_err()
        .message
}

fn to_openai(req: Value) -> Value {
    let r = translated(Api::AnthropicMessages, Api::OpenAiChat, &req).unwrap();
    serde_json::from_slice(&r.body).unwrap()
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

// ---- requests: OpenAI chat -> Anthropic messages ----

#[test]
fn system_and_developer_messages_go_into_system_in_order() {
    let a = to_anthropic(json!({"model": "m", "messages": [
        {"role": "system", "content": "one"},
        user("hi"),
        {"role": "developer", "content": [{"type": "text", "text": "two"}]},
    ]}));
    assert_eq!(
        a["system"],
        json!([{"type": "text", "text": "one"}, {"type": "text", "text": "two"}])
    );
    assert_eq!(
        a["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    );
}

#[test]
fn max_tokens_is_filled_when_missing_and_kept_when_given() {
    assert_eq!(
        to_anthropic(json!({"model": "m", "messages": [user("x")]}))["max_tokens"],
        4096
    );
    assert_eq!(
        to_anthropic(json!({"model": "m", "messages": [user("x")], "max_tokens": 7}))["max_tokens"],
        7
    );
    assert_eq!(
        to_anthropic(
            json!({"model": "m", "messages": [user("x")], "max_completion_tokens": 9, "max_tokens": 7})
        )["max_tokens"],
        9
    );
}

#[test]
fn stop_becomes_stop_sequences() {
    assert_eq!(
        to_anthropic(json!({"model": "m", "messages": [user("x")], "stop": "END"}))
            ["stop_sequences"],
        json!(["END"])
    );
    assert_eq!(
        to_anthropic(json!({"model": "m", "messages": [user("x")], "stop": ["a", "b"]}))
            ["stop_sequences"],
        json!(["a", "b"])
    );
}

#[test]
fn temperature_outside_anthropics_range_is_refused() {
    assert_eq!(
        to_anthropic(json!({"model": "m", "messages": [user("x")], "temperature": 0.7}))
            ["temperature"],
        0.7
    );
    let e = to_anthropic_err(json!({"model": "m", "messages": [user("x")], "temperature": 1.5}));
    assert!(e.contains("temperature") && e.contains("0 to 1"), "{e}");
}

#[test]
fn tools_become_input_schema() {
    let a = to_anthropic(json!({"model": "m", "messages": [user("x")], "tools": [
        {"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "now"}},
    ]}));
    assert_eq!(
        a["tools"],
        json!([
            {"name": "get_weather", "description": "w", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
            {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        ])
    );
}

#[test]
fn tool_choice_maps_and_parallel_off_disables_parallel_use() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let choice = |c: Value| {
        to_anthropic(
            json!({"model": "m", "messages": [user("x")], "tools": tools, "tool_choice": c}),
        )["tool_choice"]
            .clone()
    };
    assert_eq!(choice(json!("auto")), json!({"type": "auto"}));
    assert_eq!(choice(json!("required")), json!({"type": "any"}));
    assert_eq!(choice(json!("none")), json!({"type": "none"}));
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "f"}})),
        json!({"type": "tool", "name": "f"})
    );
    let a = to_anthropic(
        json!({"model": "m", "messages": [user("x")], "tools": tools, "parallel_tool_calls": false}),
    );
    assert_eq!(
        a["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
}

#[test]
fn assistant_tool_calls_become_tool_use_with_empty_arguments_as_object() {
    let a = to_anthropic(json!({"model": "m", "messages": [
        user("x"),
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
            {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}},
        ]},
    ]}));
    assert_eq!(
        a["messages"][1],
        json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
            {"type": "tool_use", "id": "call_2", "name": "g", "input": {}},
        ]})
    );
}

#[test]
fn consecutive_tool_results_merge_into_one_user_turn_and_roles_alternate() {
    let a = to_anthropic(json!({"model": "m", "messages": [
        user("x"),
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "r1"},
        {"role": "tool", "tool_call_id": "c2", "content": "r2"},
        user("and?"),
    ]}));
    let m = a["messages"].as_array().unwrap();
    assert_eq!(m.len(), 3);
    let roles: Vec<&str> = m.iter().map(|t| t["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(
        m[2]["content"],
        json!([
            {"type": "tool_result", "tool_use_id": "c1", "content": "r1"},
            {"type": "tool_result", "tool_use_id": "c2", "content": "r2"},
            {"type": "text", "text": "and?"},
        ])
    );
}

#[test]
fn images_data_uri_becomes_base64_and_url_a_url_source() {
    let a = to_anthropic(
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "text", "text": "what?"},
        ]}]}),
    );
    assert_eq!(
        a["messages"][0]["content"],
        json!([
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "text", "text": "what?"},
        ])
    );
}

#[test]
fn thinking_blocks_and_signatures_are_replayed_first() {
    let a = to_anthropic(json!({"model": "m", "messages": [
        user("x"),
        {"role": "assistant", "content": "answer", "thinking_blocks": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig=="},
            {"type": "redacted_thinking", "data": "opaque"},
        ]},
        user("more"),
    ]}));
    assert_eq!(
        a["messages"][1]["content"],
        json!([
            {"type": "thinking", "thinking": "hmm", "signature": "sig=="},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "answer"},
        ])
    );
}

#[test]
fn cache_control_is_kept() {
    let a = to_anthropic(json!({"model": "m", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "long", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": {"type": "ephemeral"}}]},
    ], "tools": [{"type": "function", "function": {"name": "f"}, "cache_control": {"type": "ephemeral"}}]}));
    assert_eq!(
        a["system"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(
        a["messages"][0]["content"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(a["tools"][0]["cache_control"], json!({"type": "ephemeral"}));
}

#[test]
fn untranslatable_requests_are_named_errors() {
    for (req, want) in [
        (
            json!({"model": "m", "messages": [user("x")], "n": 2}),
            "`n`",
        ),
        (
            json!({"model": "m", "messages": [user("x")], "logprobs": true}),
            "logprobs",
        ),
        (
            json!({"model": "m", "messages": [user("x")], "response_format": {"type": "json_schema"}}),
            "response_format",
        ),
        (json!({"model": "m", "messages": "x"}), "`messages`"),
        (
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}]}),
            "not JSON",
        ),
        (json!({"messages": [user("x")]}), "`model`"),
    ] {
        let e = to_anthropic_err(req);
        assert!(e.contains(want), "{e} should name {want}");
    }
    let e = request(
        Api::OpenAiChat,
        Api::AnthropicMessages,
        b"{nope",
        None,
        &Options::default(),
    )
    .unwrap_err();
    assert!(e.message.contains("not valid JSON"), "{e}");
}

#[test]
fn the_target_model_is_written_in() {
    let r = request(
        Api::OpenAiChat,
        Api::AnthropicMessages,
        json!({"model": "gpt-4o", "messages": [user("x")]})
            .to_string()
            .as_bytes(),
        Some("claude-sonnet-4-5"),
        &Options::default(),
    )
    .unwrap();
    let a: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(a["model"], "claude-sonnet-4-5");
    assert_eq!(r.reply.model, "gpt-4o");
}

// ---- responses: Anthropic -> OpenAI ----

fn chat_reply(doc: Value) -> std::result::Result<Value, Error> {
    let mut r = Reply::new(
        Api::OpenAiChat,
        Api::AnthropicMessages,
        200,
        "application/json",
        ReplySpec::default(),
    );
    let mut out = Vec::new();
    r.feed(doc.to_string().as_bytes(), &mut out)?;
    r.finish(&mut out)?;
    Ok(serde_json::from_slice(&out).unwrap())
}

fn msg(content: Value, stop: &str) -> Value {
    json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": content,
        "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}})
}

#[test]
fn all_text_blocks_are_joined() {
    let c = chat_reply(msg(
        json!([{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]),
        "end_turn",
    ))
    .unwrap();
    assert_eq!(c["choices"][0]["message"]["content"], "Hello, world");
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["model"], "claude-x");
}

#[test]
fn tool_use_becomes_tool_calls_with_string_arguments_and_null_content() {
    let c = chat_reply(msg(
        json!([
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
            {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}},
        ]),
        "tool_use",
    ))
    .unwrap();
    let m = &c["choices"][0]["message"];
    assert_eq!(m["content"], Value::Null);
    assert_eq!(m["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
    assert_eq!(m["tool_calls"][1]["function"]["arguments"], "{}");
    assert_eq!(m["tool_calls"][1]["id"], "toolu_2");
    assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
}

#[test]
fn thinking_becomes_reasoning_content_with_its_signature() {
    let c = chat_reply(msg(
        json!([
            {"type": "thinking", "thinking": "let me see", "signature": "sig=="},
            {"type": "text", "text": "42"},
        ]),
        "end_turn",
    ))
    .unwrap();
    let m = &c["choices"][0]["message"];
    assert_eq!(m["reasoning_content"], "let me see");
    assert_eq!(m["thinking_blocks"][0]["signature"], "sig==");
    assert_eq!(m["content"], "42");
}

#[test]
fn stop_reasons_map_and_an_unknown_one_is_an_error() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ] {
        let c = chat_reply(msg(json!([{"type": "text", "text": "x"}]), stop)).unwrap();
        assert_eq!(c["choices"][0]["finish_reason"], finish, "{stop}");
    }
    let e = chat_reply(msg(
        json!([{"type": "text", "text": "x"}]),
        "brand_new_reason",
    ))
    .unwrap_err();
    assert!(e.message.contains("brand_new_reason"), "{e}");
}

#[test]
fn usage_prompt_includes_cache_reads_and_writes_and_reports_cached_tokens() {
    let c = chat_reply(msg(json!([{"type": "text", "text": "x"}]), "end_turn")).unwrap();
    assert_eq!(c["usage"]["prompt_tokens"], 130);
    assert_eq!(c["usage"]["completion_tokens"], 5);
    assert_eq!(c["usage"]["total_tokens"], 135);
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
}

#[test]
fn an_untranslatable_answer_is_an_error_not_an_invented_reply() {
    let mut r = Reply::new(
        Api::OpenAiChat,
        Api::AnthropicMessages,
        200,
        "application/json",
        ReplySpec::default(),
    );
    let mut out = Vec::new();
    r.feed(
        b"{\"id\": \"msg\", \"content\": [{\"type\":\"text\",\"te",
        &mut out,
    )
    .unwrap();
    assert!(r.finish(&mut out).is_err());
    assert!(
        chat_reply(json!({"id": "m", "content": [{"type": "text", "text": "x"}]})).is_err(),
        "no stop_reason"
    );
}

#[test]
fn provider_errors_keep_their_status_in_the_fronts_shape() {
    let mut r = Reply::new(
        Api::OpenAiChat,
        Api::AnthropicMessages,
        429,
        "application/json",
        ReplySpec::default(),
    );
    let mut out = Vec::new();
    r.feed(
        br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        &mut out,
    )
    .unwrap();
    r.finish(&mut out).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("slow down"));
    let mut r = Reply::new(
        Api::AnthropicMessages,
        Api::OpenAiChat,
        400,
        "application/json",
        ReplySpec::default(),
    );
    let mut out = Vec::new();
    r.feed(
        br#"{"error":{"message":"bad","type":"invalid_request_error"}}"#,
        &mut out,
    )
    .unwrap();
    r.finish(&mut out).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

// ---- streams: Anthropic SSE -> OpenAI chunks ----

fn ev(name: &str, v: Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

/// A real-shaped Anthropic stream: thinking, text, two tool calls (one with no
/// arguments), ping, cumulative usage.
fn anthropic_stream() -> String {
    [
        ev("message_start", json!({"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 12, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 4, "output_tokens": 1}}})),
        ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}})),
        ev("ping", json!({"type": "ping"})),
        ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}})),
        ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig=="}})),
        ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        ev("content_block_start", json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}})),
        ev("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Héllo"}})),
        ev("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " there"}})),
        ev("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
        ev("content_block_start", json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}})),
        ev("content_block_delta", json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}})),
        ev("content_block_delta", json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}})),
        ev("content_block_delta", json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}})),
        ev("content_block_stop", json!({"type": "content_block_stop", "index": 2})),
        ev("content_block_start", json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}}})),
        ev("content_block_stop", json!({"type": "content_block_stop", "index": 3})),
        ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 3}})),
        ev("message_delta", json!({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 41}})),
        ev("message_stop", json!({"type": "message_stop"})),
    ]
    .concat()
}

fn run_stream(
    front: Api,
    target: Api,
    include_usage: bool,
    pieces: &[&[u8]],
) -> std::result::Result<String, (String, Error)> {
    let spec = ReplySpec {
        include_usage,
        model: "asked".into(),
    };
    let ct = if target == Api::BedrockConverse {
        "application/vnd.amazon.eventstream"
    } else {
        "text/event-stream"
    };
    let mut r = Reply::new(front, target, 200, ct, spec);
    assert!(r.is_stream());
    let mut out = Vec::new();
    for p in pieces {
        if let Err(e) = r.feed(p, &mut out) {
            return Err((String::from_utf8(out).unwrap(), e));
        }
    }
    match r.finish(&mut out) {
        Ok(()) => Ok(without_ids(without_created(
            String::from_utf8(out).unwrap(),
        ))),
        Err(e) => Err((String::from_utf8(out).unwrap(), e)),
    }
}

/// `created` is the clock's: runs a second apart differ only there.
fn without_created(s: String) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    let next = |r: &str| {
        [r.find("\"created\":"), r.find("\"created_at\":")]
            .into_iter()
            .flatten()
            .min()
    };
    while let Some(i) = next(rest) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        rest = &rest[rest.find(':').unwrap() + 1..];
        rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    out.push_str(rest);
    out
}

/// Ids the sidecar makes up (`msg_bdrk_…`, `msg_gem_…`) are unique per answer.
fn without_ids(s: String) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    let next = |r: &str| {
        ["msg_bdrk_", "msg_gem_", "toolu_gem_"]
            .iter()
            .filter_map(|k| r.find(k))
            .min()
    };
    while let Some(i) = next(rest) {
        let end = i + rest[i..].find('_').unwrap() + 1;
        let end = end + rest[end..].find('_').unwrap() + 1;
        out.push_str(&rest[..end]);
        rest = rest[end..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
    }
    out.push_str(rest);
    out
}

fn chunks(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let d = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e}"));
            if d == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(d).unwrap()
            }
        })
        .collect()
}

fn deltas(cs: &[Value]) -> Vec<&Value> {
    cs.iter()
        .filter_map(|c| c.pointer("/choices/0/delta"))
        .collect()
}

#[test]
fn stream_message_start_carries_role_and_id_and_input_usage() {
    let out = run_stream(
        Api::OpenAiChat,
        Api::AnthropicMessages,
        true,
        &[anthropic_stream().as_bytes()],
    )
    .unwrap();
    let cs = chunks(&out);
    assert_eq!(
        cs[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(cs[0]["id"], "chatcmpl-msg_01");
    assert!(cs
        .iter()
        .all(|c| c == "[DONE]" || c["id"] == "chatcmpl-msg_01"));
    let usage = &cs[cs.len() - 2]["usage"];
    assert_eq!(
        usage["prompt_tokens"], 46,
        "input 12 + cache read 30 + write 4"
    );
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 30);
}

#[test]
fn stream_tool_calls_get_dense_indexes_and_arguments_under_them() {
    let out = run_stream(
        Api::OpenAiChat,
        Api::AnthropicMessages,
        false,
        &[anthropic_stream().as_bytes()],
    )
    .unwrap();
    let cs = chunks(&out);
    let calls: Vec<&Value> = deltas(&cs)
        .into_iter()
        .filter_map(|d| d.get("tool_calls"))
        .collect();
    // starts: index 0 (block 2) and 1 (block 3), never Anthropic's block index
    assert_eq!(calls[0][0]["index"], 0);
    assert_eq!(calls[0][0]["id"], "toolu_a");
    let args0: String = calls
        .iter()
        .filter(|c| c[0]["index"] == 0)
        .filter_map(|c| c[0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args0, "{\"city\": \"Paris\"}");
    let args1: String = calls
        .iter()
        .filter(|c| c[0]["index"] == 1)
        .filter_map(|c| c[0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args1, "{}", "a tool with zero arguments still yields {{}}");
    assert!(calls.iter().all(|c| c[0]["index"].as_u64().unwrap() < 2));
}

#[test]
fn stream_thinking_becomes_reasoning_content_and_ping_is_dropped() {
    let out = run_stream(
        Api::OpenAiChat,
        Api::AnthropicMessages,
        false,
        &[anthropic_stream().as_bytes()],
    )
    .unwrap();
    assert!(!out.contains("ping"));
    let cs = chunks(&out);
    let ds = deltas(&cs);
    assert!(ds.iter().any(|d| d["reasoning_content"] == "hmm"));
    assert!(ds
        .iter()
        .any(|d| d["thinking_blocks"][0]["signature"] == "sig=="));
    let text: String = ds.iter().filter_map(|d| d["content"].as_str()).collect();
    assert_eq!(text, "Héllo there", "the first text delta is not dropped");
}

#[test]
fn stream_output_tokens_are_cumulative_and_usage_then_done_end_it() {
    let out = run_stream(
        Api::OpenAiChat,
        Api::AnthropicMessages,
        true,
        &[anthropic_stream().as_bytes()],
    )
    .unwrap();
    let cs = chunks(&out);
    assert_eq!(cs.last().unwrap(), "[DONE]");
    let u = &cs[cs.len() - 2];
    assert_eq!(u["choices"], json!([]));
    assert_eq!(
        u["usage"]["completion_tokens"], 41,
        "the largest cumulative count, not a sum"
    );
    let finishes: Vec<&Value> = cs
        .iter()
        .filter_map(|c| c.pointer("/choices/0/finish_reason"))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("tool_calls")]);
    // without include_usage: no usage chunk, no usage field
    let out = run_stream(
        Api::OpenAiChat,
        Api::AnthropicMessages,
        false,
        &[anthropic_stream().as_bytes()],
    )
    .unwrap();
    assert!(!out.contains("usage"));
    assert!(out.ends_with("data: [DONE]\n\n"));
}

#[test]
fn stream_upstream_error_event_ends_the_stream_visibly() {
    let s = [
        ev("message_start", json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}})),
        ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "par"}})),
        ev("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
    ]
    .concat();
    let out = run_stream(
        Api::OpenAiChat,
        Api::AnthropicMessages,
        false,
        &[s.as_bytes()],
    )
    .unwrap();
    let cs = chunks(&out);
    assert_eq!(cs.last().unwrap()["error"]["message"], "Overloaded");
    assert!(!out.contains("[DONE]"));
}

#[test]
fn stream_cut_before_message_stop_is_an_error() {
    let s = anthropic_stream();
    let cut = &s[..s.find("event: message_delta").unwrap()];
    let (_, e) = run_stream(
        Api::OpenAiChat,
        Api::AnthropicMessages,
        false,
        &[cut.as_bytes()],
    )
    .unwrap_err();
    assert!(e.message.contains("message_stop"), "{e}");
}

/// The same stream, split at every byte (and into single bytes), translates the same.
#[test]
fn stream_split_at_any_byte_gives_the_same_translation() {
    for (front, target, s) in [
        (Api::OpenAiChat, Api::AnthropicMessages, anthropic_stream()),
        (Api::AnthropicMessages, Api::OpenAiChat, openai_stream(true)),
    ] {
        let b = s.as_bytes();
        let whole = run_stream(front, target, true, &[b]).unwrap();
        for at in 0..b.len() {
            let split = run_stream(front, target, true, &[&b[..at], &b[at..]]).unwrap();
            assert_eq!(whole, split, "split at {at}");
        }
        let bytes: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(whole, run_stream(front, target, true, &bytes).unwrap());
        // CRLF line ends are the same events
        let crlf = s.replace('\n', "\r\n");
        assert_eq!(
            whole,
            run_stream(front, target, true, &[crlf.as_bytes()]).unwrap()
        );
    }
}

// ---- Anthropic clients, OpenAI providers ----

#[test]
fn anthropic_request_to_chat() {
    let o = to_openai(json!({
        "model": "gpt-4o", "max_tokens": 100, "system": [{"type": "text", "text": "be brief"}],
        "stop_sequences": ["END"], "temperature": 0.5,
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "calling"}, {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}, {"type": "text", "text": "next"}]},
        ],
        "stream": true,
    }));
    assert_eq!(
        o["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(
        o["messages"][1]["content"][1],
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}})
    );
    assert_eq!(
        o["messages"][2]["tool_calls"][0]["function"]["arguments"],
        "{\"x\":1}"
    );
    assert_eq!(
        o["messages"][3],
        json!({"role": "tool", "tool_call_id": "t1", "content": "ok"})
    );
    assert_eq!(o["messages"][4], json!({"role": "user", "content": "next"}));
    assert_eq!(o["stop"], json!(["END"]));
    assert_eq!(o["tool_choice"], "required");
    assert_eq!(o["parallel_tool_calls"], false);
    assert_eq!(
        o["tools"][0]["function"]["parameters"],
        json!({"type": "object", "properties": {}})
    );
    assert_eq!(o["stream_options"], json!({"include_usage": true}));
}

fn openai_stream(tools: bool) -> String {
    let c = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut s = c(json!({"role": "assistant", "content": "Hel"}), Value::Null);
    s += &c(json!({"content": "lo"}), Value::Null);
    if tools {
        s += &c(
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
            Value::Null,
        );
        s += &c(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}),
            Value::Null,
        );
        s += &c(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            Value::Null,
        );
        s += &c(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}),
            Value::Null,
        );
        s += &c(json!({}), json!("tool_calls"));
    } else {
        s += &c(json!({}), json!("stop"));
    }
    s += &format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": "20", "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 5}}})
    );
    s += "data: [DONE]\n\n";
    s
}

fn named_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (n, d) = e.split_once('\n').unwrap();
            (
                n.strip_prefix("event: ").unwrap().to_string(),
                serde_json::from_str(d.strip_prefix("data: ").unwrap()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn reverse_stream_has_one_message_start_ordered_blocks_and_no_dropped_first_delta() {
    let out = run_stream(
        Api::AnthropicMessages,
        Api::OpenAiChat,
        true,
        &[openai_stream(true).as_bytes()],
    )
    .unwrap();
    let evs = named_events(&out);
    assert_eq!(evs.iter().filter(|(n, _)| n == "message_start").count(), 1);
    assert_eq!(evs[0].0, "message_start");
    // blocks open and close in order, never two open at once
    let mut open: Option<u64> = None;
    let mut next = 0;
    for (n, v) in &evs {
        match n.as_str() {
            "content_block_start" => {
                assert!(open.is_none(), "overlapping blocks: {out}");
                assert_eq!(v["index"], next);
                open = Some(next);
            }
            "content_block_delta" => assert_eq!(Some(v["index"].as_u64().unwrap()), open),
            "content_block_stop" => {
                assert_eq!(Some(v["index"].as_u64().unwrap()), open);
                open = None;
                next += 1;
            }
            _ => {}
        }
    }
    assert_eq!(next, 3, "text, tool a, tool b");
    let text: String = evs
        .iter()
        .filter_map(|(_, v)| v.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(text, "Hello", "the first delta (with the role) is kept");
    let args: String = evs
        .iter()
        .filter(|(_, v)| v["index"] == 1)
        .filter_map(|(_, v)| v.pointer("/delta/partial_json").and_then(Value::as_str))
        .collect();
    assert_eq!(args, "{\"a\":1}");
    let (n, d) = &evs[evs.len() - 2];
    assert_eq!(n, "message_delta");
    assert_eq!(d["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        d["usage"],
        json!({"input_tokens": 15, "output_tokens": 7, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0}),
        "numbers sent as strings are read"
    );
    assert_eq!(evs.last().unwrap().0, "message_stop");
}

#[test]
fn reverse_stream_tolerates_a_null_final_finish_reason_and_a_missing_usage() {
    let c = |delta: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "x", "choices": [{"index": 0, "delta": delta, "finish_reason": null}], "extra": {"anything": 1}})
        )
    };
    let s = c(json!({"content": "hi"})) + &c(json!({})) + "data: [DONE]\n\n";
    let out = run_stream(
        Api::AnthropicMessages,
        Api::OpenAiChat,
        true,
        &[s.as_bytes()],
    )
    .unwrap();
    let evs = named_events(&out);
    let d = &evs[evs.len() - 2].1;
    assert_eq!(d["delta"]["stop_reason"], "end_turn");
    assert_eq!(d["usage"]["output_tokens"], 0);
    // a stream with neither [DONE] nor a finish reason was cut
    let (_, e) = run_stream(
        Api::AnthropicMessages,
        Api::OpenAiChat,
        true,
        &[c(json!({"content": "hi"})).as_bytes()],
    )
    .unwrap_err();
    assert!(e.message.contains("finish reason"), "{e}");
}

#[test]
fn reverse_json_response() {
    let mut r = Reply::new(
        Api::AnthropicMessages,
        Api::OpenAiChat,
        200,
        "application/json",
        ReplySpec {
            include_usage: false,
            model: "gpt".into(),
        },
    );
    let mut out = Vec::new();
    r.feed(json!({"id": "chatcmpl-1", "model": "gpt-4o", "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":2}"}}]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}).to_string().as_bytes(), &mut out).unwrap();
    r.finish(&mut out).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"],
        json!([{"type": "tool_use", "id": "c1", "name": "f", "input": {"q": 2}}])
    );
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["usage"]["input_tokens"], 9);
}

// ---- Bedrock Converse ----

fn to_bedrock(req: Value) -> (Value, Request) {
    let r = translated(Api::OpenAiChat, Api::BedrockConverse, &req).unwrap();
    (serde_json::from_slice(&r.body).unwrap(), r)
}

fn tool_def(name: &str) -> Value {
    json!({"type": "function", "function": {"name": name, "description": "d",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "additionalProperties": false}}})
}

fn with_tool_history() -> Vec<Value> {
    vec![
        json!({"role": "system", "content": "be brief"}),
        user("weather in Paris and Rome?"),
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"q\":\"Paris\"}"}},
            {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
        json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"}),
        json!({"role": "tool", "tool_call_id": "c2", "content": "rain"}),
        user("thanks"),
    ]
}

#[test]
fn bedrock_request_alternates_roles_and_maps_tool_use_and_results() {
    let (b, r) = to_bedrock(json!({"model": "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "messages": with_tool_history(), "max_tokens": 100, "temperature": 0.5, "top_p": 0.9,
        "stop": ["END"], "tools": [tool_def("weather")], "tool_choice": "required"}));
    assert_eq!(r.model, "anthropic.claude-3-5-sonnet-20240620-v1:0");
    assert!(b.get("model").is_none() && b.get("stream").is_none());
    assert_eq!(b["system"], json!([{"text": "be brief"}]));
    assert_eq!(
        b["inferenceConfig"],
        json!({"maxTokens": 100, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]})
    );
    let m = b["messages"].as_array().unwrap();
    let roles: Vec<&str> = m.iter().map(|t| t["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(
        m[1]["content"],
        json!([{"toolUse": {"toolUseId": "c1", "name": "weather", "input": {"q": "Paris"}}},
               {"toolUse": {"toolUseId": "c2", "name": "weather", "input": {}}}])
    );
    // both results, then the user's text, in one turn
    assert_eq!(
        m[2]["content"],
        json!([{"toolResult": {"toolUseId": "c1", "content": [{"text": "sunny"}]}},
               {"toolResult": {"toolUseId": "c2", "content": [{"text": "rain"}]}},
               {"text": "thanks"}])
    );
    assert_eq!(b["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert_eq!(
        b["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"],
        json!({"q": {"type": "string"}})
    );
}

#[test]
fn bedrock_tool_config_is_sent_whenever_the_history_holds_tool_use() {
    // no tools offered, but the history has calls: they are declared
    let (b, _) = to_bedrock(json!({"model": "m", "messages": with_tool_history()}));
    assert_eq!(
        b["toolConfig"],
        json!({"tools": [{"toolSpec": {"name": "weather", "inputSchema": {"json": {"type": "object"}}}}]})
    );
    // "none" with a history: the tools are sent (Converse needs them), no choice
    let (b, _) = to_bedrock(json!({"model": "m", "messages": with_tool_history(),
        "tools": [tool_def("weather")], "tool_choice": "none"}));
    assert!(b["toolConfig"]["tools"].is_array());
    assert!(b["toolConfig"].get("toolChoice").is_none());
    // "none" without a history: no tools at all
    let (b, _) = to_bedrock(json!({"model": "m", "messages": [user("x")],
        "tools": [tool_def("weather")], "tool_choice": "none"}));
    assert!(b.get("toolConfig").is_none());
    // a named tool
    let (b, _) = to_bedrock(json!({"model": "m", "messages": [user("x")],
        "tools": [tool_def("weather")], "tool_choice": {"type": "function", "function": {"name": "weather"}}}));
    assert_eq!(
        b["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "weather"}})
    );
}

#[test]
fn bedrock_images_are_bytes_and_a_url_image_is_refused() {
    let (b, _) = to_bedrock(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this", "cache_control": {"type": "ephemeral"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}),
    );
    assert_eq!(
        b["messages"][0]["content"],
        json!([{"text": "what is this"}, {"cachePoint": {"type": "default"}},
               {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}])
    );
    let e = translated(
        Api::OpenAiChat,
        Api::BedrockConverse,
        &json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
    )
    .unwrap_err();
    assert!(e.message.contains("data URI"), "{}", e.message);
    let e = translated(
        Api::OpenAiChat,
        Api::BedrockConverse,
        &json!({"model": "m", "messages": [user("x")], "n": 2}),
    )
    .unwrap_err();
    assert!(e.message.contains("to Bedrock"), "{}", e.message);
}

#[test]
fn bedrock_paths_name_the_model_encoded() {
    assert_eq!(
        Api::BedrockConverse.model_path("", "anthropic.claude-3-haiku-20240307-v1:0", false),
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    );
    assert_eq!(
        Api::BedrockConverse.model_path(
            "/x",
            "arn:aws:bedrock:us-east-1:1:inference-profile/p",
            true
        ),
        "/x/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fp/converse-stream"
    );
    assert_eq!(
        Api::Gemini.model_path("/v1/projects/p/locations/l", "gemini-2.5-flash", true),
        "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
}

fn json_reply(front: Api, target: Api, doc: Value) -> std::result::Result<Value, Error> {
    let spec = ReplySpec {
        include_usage: false,
        model: "asked".into(),
    };
    let mut r = Reply::new(front, target, 200, "application/json", spec);
    let mut out = Vec::new();
    r.feed(doc.to_string().as_bytes(), &mut out)?;
    r.finish(&mut out)?;
    Ok(serde_json::from_slice(&out).unwrap())
}

#[test]
fn bedrock_answer_becomes_a_chat_completion() {
    let c = json_reply(Api::OpenAiChat, Api::BedrockConverse, json!({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}},
            {"text": "Let me check. "},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "weather", "input": {"q": "Paris"}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 27, "cacheReadInputTokens": 8, "cacheWriteInputTokens": 4},
        "metrics": {"latencyMs": 1}
    })).unwrap();
    let m = &c["choices"][0]["message"];
    assert_eq!(m["content"], "Let me check. ");
    assert_eq!(m["reasoning_content"], "hmm");
    assert_eq!(m["tool_calls"][0]["id"], "tooluse_1");
    assert_eq!(
        m["tool_calls"][0]["function"]["arguments"],
        "{\"q\":\"Paris\"}"
    );
    assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(c["model"], "asked");
    assert_eq!(c["usage"]["prompt_tokens"], 22);
    assert_eq!(c["usage"]["completion_tokens"], 5);
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ] {
        let c = json_reply(Api::OpenAiChat, Api::BedrockConverse, json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "x"}]}}, "stopReason": stop})).unwrap();
        assert_eq!(c["choices"][0]["finish_reason"], finish, "{stop}");
    }
    let e = json_reply(Api::OpenAiChat, Api::BedrockConverse, json!({
        "output": {"message": {"role": "assistant", "content": [{"text": "x"}]}}, "stopReason": "mystery"})).unwrap_err();
    assert!(e.message.contains("mystery"));
    let e = json_reply(
        Api::OpenAiChat,
        Api::BedrockConverse,
        json!({"unexpected": true}),
    )
    .unwrap_err();
    assert!(e.message.contains("output.message.content"));
}

fn bedrock_stream(exception: bool) -> Vec<u8> {
    let e = |t: &str, v: Value| crate::mock::event_stream_message(t, &v).to_vec();
    let mut s = Vec::new();
    s.extend(e("messageStart", json!({"role": "assistant"})));
    s.extend(e(
        "contentBlockDelta",
        json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
    ));
    s.extend(e(
        "contentBlockDelta",
        json!({"contentBlockIndex": 0, "delta": {"text": "lo"}}),
    ));
    s.extend(e("contentBlockStop", json!({"contentBlockIndex": 0})));
    if exception {
        s.extend(exception_frame(
            "throttlingException",
            b"{\"message\":\"slow down\"}",
        ));
        return s;
    }
    for (i, id) in [(1, "tu_a"), (2, "tu_b")] {
        s.extend(e("contentBlockStart", json!({"contentBlockIndex": i, "start": {"toolUse": {"toolUseId": id, "name": "weather"}}})));
        if i == 1 {
            s.extend(e(
                "contentBlockDelta",
                json!({"contentBlockIndex": i, "delta": {"toolUse": {"input": "{\"q\":"}}}),
            ));
            s.extend(e(
                "contentBlockDelta",
                json!({"contentBlockIndex": i, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
            ));
        }
        s.extend(e("contentBlockStop", json!({"contentBlockIndex": i})));
    }
    s.extend(e("messageStop", json!({"stopReason": "tool_use"})));
    s.extend(e("metadata", json!({"usage": {"inputTokens": 12, "outputTokens": 7, "totalTokens": 19, "cacheReadInputTokens": 3}, "metrics": {"latencyMs": 5}})));
    s
}

fn exception_frame(kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut headers = Vec::new();
    for (n, v) in [
        (":message-type", "exception"),
        (":exception-type", kind),
        (":content-type", "application/json"),
    ] {
        headers.push(n.len() as u8);
        headers.extend_from_slice(n.as_bytes());
        headers.push(7);
        headers.extend_from_slice(&(v.len() as u16).to_be_bytes());
        headers.extend_from_slice(v.as_bytes());
    }
    let total = 12 + headers.len() + payload.len() + 4;
    let mut m = Vec::new();
    m.extend_from_slice(&(total as u32).to_be_bytes());
    m.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let c = crc32fast::hash(&m);
    m.extend_from_slice(&c.to_be_bytes());
    m.extend_from_slice(&headers);
    m.extend_from_slice(payload);
    let c = crc32fast::hash(&m);
    m.extend_from_slice(&c.to_be_bytes());
    m
}

#[test]
fn bedrock_stream_becomes_chat_chunks_with_usage_from_metadata_after_message_stop() {
    let s = bedrock_stream(false);
    let out = run_stream(Api::OpenAiChat, Api::BedrockConverse, true, &[&s]).unwrap();
    let cs = chunks(&out);
    let d = deltas(&cs);
    assert_eq!(d[0]["role"], "assistant");
    assert_eq!(d[1]["content"], "Hel", "the first text delta is kept");
    assert_eq!(d[2]["content"], "lo");
    assert_eq!(d[3]["tool_calls"][0]["index"], 0, "dense tool indexes");
    assert_eq!(d[3]["tool_calls"][0]["id"], "tu_a");
    assert_eq!(d[4]["tool_calls"][0]["function"]["arguments"], "{\"q\":");
    assert_eq!(d[6]["tool_calls"][0]["index"], 1);
    assert_eq!(
        d[7]["tool_calls"][0]["function"]["arguments"], "{}",
        "a call with no input"
    );
    assert_eq!(
        cs[cs.len() - 3]["choices"][0]["finish_reason"],
        "tool_calls"
    );
    let u = &cs[cs.len() - 2]["usage"];
    assert_eq!(u["prompt_tokens"], 15);
    assert_eq!(u["completion_tokens"], 7);
    assert_eq!(cs[cs.len() - 1], "[DONE]");
    // any split of the bytes gives the same stream
    for at in 0..s.len() {
        let split = run_stream(
            Api::OpenAiChat,
            Api::BedrockConverse,
            true,
            &[&s[..at], &s[at..]],
        )
        .unwrap();
        assert_eq!(out, split, "split at {at}");
    }
}

#[test]
fn bedrock_stream_exceptions_and_corruption_end_the_stream_visibly() {
    let s = bedrock_stream(true);
    let out = run_stream(Api::OpenAiChat, Api::BedrockConverse, true, &[&s]).unwrap();
    let last = chunks(&out).pop().unwrap();
    assert_eq!(last["error"]["type"], "rate_limit_error");
    assert!(last["error"]["message"]
        .as_str()
        .unwrap()
        .contains("slow down"));
    // a flipped byte breaks the checksum
    let mut bad = bedrock_stream(false);
    let n = bad.len() / 2;
    bad[n] ^= 0x20;
    let (_, e) = run_stream(Api::OpenAiChat, Api::BedrockConverse, true, &[&bad]).unwrap_err();
    assert!(e.message.contains("checksum"), "{}", e.message);
    // cut before messageStop
    let s = bedrock_stream(false);
    let (_, e) = run_stream(
        Api::OpenAiChat,
        Api::BedrockConverse,
        true,
        &[&s[..s.len() / 2]],
    )
    .unwrap_err();
    assert!(e.message.contains("ended"), "{}", e.message);
}

#[test]
fn bedrock_stream_to_a_messages_client_has_one_start_and_ordered_blocks() {
    let s = bedrock_stream(false);
    let out = run_stream(Api::AnthropicMessages, Api::BedrockConverse, true, &[&s]).unwrap();
    let ev = named_events(&out);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.iter().filter(|n| **n == "message_start").count(), 1);
    assert_eq!(names[0], "message_start");
    assert_eq!(*names.last().unwrap(), "message_stop");
    let starts: Vec<u64> = ev
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, v)| v["index"].as_u64().unwrap())
        .collect();
    assert_eq!(starts, [0, 1, 2]);
    let md = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(md.1["delta"]["stop_reason"], "tool_use");
    assert_eq!(md.1["usage"]["output_tokens"], 7);
}

#[test]
fn a_messages_request_goes_to_bedrock_too() {
    let r = translated(
        Api::AnthropicMessages,
        Api::BedrockConverse,
        &json!({
        "model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "s"}],
        "messages": [user("hi"), {"role": "assistant", "content": "yo"}, user("more")],
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "stream": true}),
    )
    .unwrap();
    assert!(r.stream);
    let b: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(b["messages"].as_array().unwrap().len(), 3);
    assert_eq!(
        b["additionalModelRequestFields"]["thinking"]["budget_tokens"],
        1024
    );
    let e = translated(
        Api::AnthropicMessages,
        Api::BedrockConverse,
        &json!({
        "model": "m", "max_tokens": 10, "messages": [user("hi")], "container": "c"}),
    )
    .unwrap_err();
    assert!(e.message.contains("`container`"), "{}", e.message);
}

// ---- Gemini ----

fn to_gemini(req: Value) -> Value {
    let r = translated(Api::OpenAiChat, Api::Gemini, &req).unwrap();
    assert_eq!(r.model, req["model"].as_str().unwrap());
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn gemini_request_has_contents_system_config_tools_and_named_function_responses() {
    let g = to_gemini(
        json!({"model": "gemini-2.5-flash", "messages": with_tool_history(),
        "max_tokens": 50, "temperature": 1.5, "tools": [tool_def("weather")], "tool_choice": "auto"}),
    );
    assert_eq!(
        g["systemInstruction"],
        json!({"parts": [{"text": "be brief"}]})
    );
    assert_eq!(
        g["generationConfig"],
        json!({"maxOutputTokens": 50, "temperature": 1.5})
    );
    let c = g["contents"].as_array().unwrap();
    let roles: Vec<&str> = c.iter().map(|t| t["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "model", "user"]);
    assert_eq!(
        c[1]["parts"][0],
        json!({"functionCall": {"name": "weather", "args": {"q": "Paris"}}})
    );
    assert_eq!(
        c[2]["parts"][0],
        json!({"functionResponse": {"name": "weather", "response": {"content": "sunny"}}})
    );
    assert_eq!(c[2]["parts"][2], json!({"text": "thanks"}));
    let decl = &g["tools"][0]["functionDeclarations"][0];
    assert_eq!(decl["name"], "weather");
    assert!(
        decl["parameters"].get("additionalProperties").is_none(),
        "a keyword Gemini refuses is dropped"
    );
    assert_eq!(
        g["toolConfig"],
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );
    // Gemini's temperature goes to 2; above is refused
    let e = translated(
        Api::OpenAiChat,
        Api::Gemini,
        &json!({"model": "g", "messages": [user("x")], "temperature": 2.5}),
    )
    .unwrap_err();
    assert!(e.message.contains("Gemini"), "{}", e.message);
    // a tool result that answers no call
    let e = translated(
        Api::OpenAiChat,
        Api::Gemini,
        &json!({"model": "g", "messages": [
        user("x"), {"role": "tool", "tool_call_id": "nope", "content": "r"}]}),
    )
    .unwrap_err();
    assert!(e.message.contains("nope"), "{}", e.message);
}

#[test]
fn gemini_tool_calls_get_synthetic_ids_that_carry_the_thought_signature_back() {
    let c = json_reply(Api::OpenAiChat, Api::Gemini, json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"q": "Paris"}}, "thoughtSignature": "SIG/A+="},
            {"functionCall": {"name": "weather", "args": {"q": "Rome"}}}]},
            "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 6, "thoughtsTokenCount": 4, "cachedContentTokenCount": 5, "totalTokenCount": 30},
        "modelVersion": "gemini-2.5-flash", "responseId": "r1"
    })).unwrap();
    let calls = c["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    let id0 = calls[0]["id"].as_str().unwrap();
    let id1 = calls[1]["id"].as_str().unwrap();
    assert_ne!(id0, id1);
    assert!(id0.ends_with("__thought__SIG/A+="), "{id0}");
    assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
    assert!(c["choices"][0]["message"]["content"].is_null());
    assert_eq!(
        c["usage"]["prompt_tokens"], 20,
        "Gemini's prompt count already includes the cache"
    );
    assert_eq!(c["usage"]["completion_tokens"], 10, "thoughts are output");
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
    // the client replays the calls: the signature goes back on its part
    let g = to_gemini(json!({"model": "g", "messages": [user("w?"),
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": id0, "content": "sunny"},
        {"role": "tool", "tool_call_id": id1, "content": "rain"}]}));
    assert_eq!(g["contents"][1]["parts"][0]["thoughtSignature"], "SIG/A+=");
    assert!(g["contents"][1]["parts"][1]
        .get("thoughtSignature")
        .is_none());
    assert_eq!(
        g["contents"][2]["parts"][1]["functionResponse"]["name"],
        "weather"
    );
    for (f, finish) in [
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("STOP", "stop"),
    ] {
        let c = json_reply(
            Api::OpenAiChat,
            Api::Gemini,
            json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": f}]}),
        )
        .unwrap();
        assert_eq!(c["choices"][0]["finish_reason"], finish, "{f}");
    }
    assert!(json_reply(
        Api::OpenAiChat,
        Api::Gemini,
        json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "OTHER"}]})
    )
    .is_err());
    assert!(json_reply(Api::OpenAiChat, Api::Gemini, json!({"candidates": [{"content": {"parts": []}, "finishReason": "MALFORMED_FUNCTION_CALL"}]})).is_err());
}

fn gemini_stream() -> String {
    let d = |v: Value| format!("data: {v}\r\n\r\n");
    [
        d(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "thinking...", "thought": true}]}}], "responseId": "r9"})),
        d(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "It is"}]}}]})),
        d(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " sunny."}]}}], "usageMetadata": {"promptTokenCount": "9"}})),
        d(json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {}}, "thoughtSignature": "S1"}]}, "finishReason": "STOP"}],
                 "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13}})),
    ]
    .concat()
}

#[test]
fn gemini_stream_becomes_chat_chunks_ending_with_usage() {
    let s = gemini_stream();
    let out = run_stream(Api::OpenAiChat, Api::Gemini, true, &[s.as_bytes()]).unwrap();
    let cs = chunks(&out);
    let d = deltas(&cs);
    assert_eq!(d[0]["role"], "assistant");
    assert_eq!(d[1]["reasoning_content"], "thinking...");
    assert_eq!(d[2]["content"], "It is");
    assert_eq!(d[3]["content"], " sunny.");
    assert_eq!(d[4]["tool_calls"][0]["index"], 0);
    assert!(d[4]["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .ends_with("__thought__S1"));
    assert_eq!(d[5]["tool_calls"][0]["function"]["arguments"], "{}");
    assert_eq!(
        cs[cs.len() - 3]["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(cs[cs.len() - 2]["usage"]["total_tokens"], 13);
    assert_eq!(cs[cs.len() - 1], "[DONE]");
    let b = s.as_bytes();
    for at in 0..b.len() {
        let split = run_stream(Api::OpenAiChat, Api::Gemini, true, &[&b[..at], &b[at..]]).unwrap();
        assert_eq!(out, split, "split at {at}");
    }
    // a stream that ends before a finish reason was cut
    let cut = &b[..b.len() / 2];
    assert!(run_stream(Api::OpenAiChat, Api::Gemini, true, &[cut]).is_err());
    // to a Messages client: blocks in order, never overlapping
    let out = run_stream(Api::AnthropicMessages, Api::Gemini, true, &[b]).unwrap();
    let ev = named_events(&out);
    let mut open: Option<u64> = None;
    for (n, v) in &ev {
        match n.as_str() {
            "content_block_start" => {
                assert!(open.is_none(), "overlapping blocks");
                open = v["index"].as_u64();
            }
            "content_block_stop" => {
                assert_eq!(open, v["index"].as_u64());
                open = None;
            }
            _ => {}
        }
    }
    assert_eq!(
        ev.iter()
            .filter(|(n, _)| n == "content_block_start")
            .count(),
        3
    );
}

// ---- OpenAI Responses clients ----

#[test]
fn responses_request_becomes_chat_with_calls_merged_and_outputs_as_tool_messages() {
    let r = translated(Api::OpenAiResponses, Api::OpenAiChat, &json!({
        "model": "gpt-4o", "instructions": "be brief", "max_output_tokens": 50,
        "reasoning": {"effort": "low"}, "stream": true,
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
        "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "weather"},
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                         {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{\"q\":1}"},
            {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sun"},
            {"type": "function_call_output", "call_id": "c2", "output": "rain"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}
        ]})).unwrap();
    assert!(r.stream);
    let c: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        c["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(
        c["messages"][1]["content"][1],
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})
    );
    assert_eq!(
        c["messages"][2]["tool_calls"].as_array().unwrap().len(),
        2,
        "calls in a row are one turn"
    );
    assert_eq!(
        c["messages"][3],
        json!({"role": "tool", "tool_call_id": "c1", "content": "sun"})
    );
    assert_eq!(
        c["messages"][5],
        json!({"role": "assistant", "content": "ok"})
    );
    assert_eq!(c["max_completion_tokens"], 50);
    assert_eq!(c["reasoning_effort"], "low");
    assert_eq!(c["response_format"]["json_schema"]["strict"], true);
    assert_eq!(c["tools"][0]["function"]["name"], "weather");
    assert_eq!(
        c["tool_choice"],
        json!({"type": "function", "function": {"name": "weather"}})
    );
    assert_eq!(c["stream_options"]["include_usage"], true);
    // and on to Anthropic, through the Chat rules
    let a = translated(
        Api::OpenAiResponses,
        Api::AnthropicMessages,
        &json!({
        "model": "m", "instructions": "sys", "input": "hi"}),
    )
    .unwrap();
    let a: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(a["system"][0]["text"], "sys");
    assert_eq!(a["max_tokens"], 4096);
    for (body, names) in [
        (
            json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
            "hosted tools",
        ),
        (
            json!({"model": "m", "input": [{"type": "file_search_call"}]}),
            "file_search_call",
        ),
    ] {
        let e = translated(Api::OpenAiResponses, Api::AnthropicMessages, &body).unwrap_err();
        assert!(e.message.contains(names), "{}", e.message);
    }
}

fn responses_reply(
    target: Api,
    status: u16,
    ct: &str,
    pieces: &[&[u8]],
) -> std::result::Result<String, Error> {
    let spec = ReplySpec {
        include_usage: true,
        model: "asked".into(),
    };
    let mut r = Reply::new(Api::OpenAiResponses, target, status, ct, spec);
    let mut out = Vec::new();
    for p in pieces {
        r.feed(p, &mut out)?;
    }
    r.finish(&mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn responses_answers_from_chat_and_from_anthropic() {
    let chat = json!({"id": "chatcmpl-9", "object": "chat.completion", "model": "gpt-4o", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": "Hi.", "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"q\":1}"}}]}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14, "prompt_tokens_details": {"cached_tokens": 2}}});
    let r: Value = serde_json::from_str(
        &responses_reply(
            Api::OpenAiChat,
            200,
            "application/json",
            &[chat.to_string().as_bytes()],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(r["object"], "response");
    assert_eq!(r["id"], "resp_9");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["output"][0]["type"], "message");
    assert_eq!(
        r["output"][0]["content"][0],
        json!({"type": "output_text", "text": "Hi.", "annotations": []})
    );
    assert_eq!(r["output"][1]["type"], "function_call");
    assert_eq!(r["output"][1]["call_id"], "call_1");
    assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 2);
    // an Anthropic answer cut at max_tokens: incomplete
    let msg = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Partial"}], "stop_reason": "max_tokens", "usage": {"input_tokens": 3, "output_tokens": 5}});
    let r: Value = serde_json::from_str(
        &responses_reply(
            Api::AnthropicMessages,
            200,
            "application/json",
            &[msg.to_string().as_bytes()],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(r["model"], "claude-x");
    // errors keep OpenAI's shape (Responses shares it) and their status
    let e = responses_reply(
        Api::AnthropicMessages,
        429,
        "application/json",
        &[br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#],
    )
    .unwrap();
    let e: Value = serde_json::from_str(&e).unwrap();
    assert_eq!(e["error"]["type"], "rate_limit_error");
}

#[test]
fn responses_stream_from_anthropic_is_ordered_and_split_proof() {
    let s = anthropic_stream();
    let b = s.as_bytes();
    let whole = without_created(
        responses_reply(Api::AnthropicMessages, 200, "text/event-stream", &[b]).unwrap(),
    );
    let ev = named_events(&whole);
    let types: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(types[0], "response.created");
    assert_eq!(types[1], "response.in_progress");
    assert_eq!(*types.last().unwrap(), "response.completed");
    for (i, (_, v)) in ev.iter().enumerate() {
        assert_eq!(v["sequence_number"], i as u64);
    }
    // items open and close in order, one at a time
    let mut open: Option<u64> = None;
    for (n, v) in &ev {
        match n.as_str() {
            "response.output_item.added" => {
                assert!(open.is_none(), "{whole}");
                open = v["output_index"].as_u64();
            }
            "response.output_item.done" => {
                assert_eq!(open, v["output_index"].as_u64());
                open = None;
            }
            _ => {}
        }
    }
    let done = &ev.last().unwrap().1["response"];
    assert!(
        done["usage"]["output_tokens"].as_u64().unwrap() > 0,
        "{done}"
    );
    for at in 0..b.len() {
        let split = without_created(
            responses_reply(
                Api::AnthropicMessages,
                200,
                "text/event-stream",
                &[&b[..at], &b[at..]],
            )
            .unwrap(),
        );
        assert_eq!(whole, split, "split at {at}");
    }
}

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
    let mut r = Reply::new(front, target, 200, "text/event-stream", spec);
    assert!(r.is_stream());
    let mut out = Vec::new();
    for p in pieces {
        if let Err(e) = r.feed(p, &mut out) {
            return Err((String::from_utf8(out).unwrap(), e));
        }
    }
    match r.finish(&mut out) {
        Ok(()) => Ok(without_created(String::from_utf8(out).unwrap())),
        Err(e) => Err((String::from_utf8(out).unwrap(), e)),
    }
}

/// `created` is the clock's: runs a second apart differ only there.
fn without_created(s: String) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest.find("\"created\":") {
        out.push_str(&rest[..i]);
        rest = &rest[i + 10..];
        rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        rest = rest.strip_prefix(',').unwrap_or(rest);
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

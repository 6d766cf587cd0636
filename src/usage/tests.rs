//! Every format against real-shaped fixtures (`tests/fixtures/usage/`), fed whole and
//! in every split, so events that cross chunk boundaries are covered.

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/usage/",
            $name
        ))
    };
}

fn parse(ct: &str, body: &[u8], chunk: usize) -> Usage {
    let mut p = UsageParser::for_content_type(ct).unwrap();
    for c in body.chunks(chunk.max(1)) {
        p.feed(c);
    }
    p.finish(true)
}

/// The same answer whole, byte by byte, and in a few odd chunk sizes.
fn check(ct: &str, body: &[u8], want: Usage) {
    for size in [body.len(), 1, 2, 7, 64, 333] {
        assert_eq!(parse(ct, body, size), want, "{ct}, chunks of {size}");
    }
}

fn u(input: u64, output: u64, cache_read: u64, cache_write: u64, reasoning: u64) -> Usage {
    Usage {
        input,
        output,
        cache_read,
        cache_write,
        reasoning,
    }
}

const JSON: &str = "application/json";
const SSE: &str = "text/event-stream; charset=utf-8";

#[test]
fn openai_chat_completions() {
    check(JSON, fixture!("openai_chat.json"), u(1117, 46, 1024, 0, 12));
    check(
        SSE,
        fixture!("openai_chat_stream.sse"),
        u(1200, 2, 1152, 0, 0),
    );
}

#[test]
fn openai_responses() {
    check(JSON, fixture!("openai_responses.json"), u(36, 87, 0, 0, 64));
    check(
        SSE,
        fixture!("openai_responses_stream.sse"),
        u(328, 3, 256, 0, 0),
    );
}

#[test]
fn anthropic_messages() {
    // input_tokens excludes cache reads and writes: they are added back.
    check(
        JSON,
        fixture!("anthropic_messages.json"),
        u(21 + 188086, 393, 0, 188086, 0),
    );
    // message_start (input 25 + 2048 cached, output 1) then message_delta (output 15)
    check(
        SSE,
        fixture!("anthropic_messages_stream.sse"),
        u(25 + 2048, 15, 2048, 0, 0),
    );
}

#[test]
fn bedrock_converse_and_converse_stream() {
    check(
        JSON,
        fixture!("bedrock_converse.json"),
        u(30 + 1000, 628, 1000, 0, 0),
    );
    // ConverseStream in AWS event-stream framing, as the mock (and Bedrock) sends it.
    let mut body = Vec::new();
    for (ty, payload) in [
        ("messageStart", serde_json::json!({"role": "assistant"})),
        (
            "contentBlockDelta",
            serde_json::json!({"delta": {"text": "Hi"}, "contentBlockIndex": 0}),
        ),
        (
            "contentBlockDelta",
            serde_json::json!({"delta": {"text": "!"}, "contentBlockIndex": 0}),
        ),
        ("messageStop", serde_json::json!({"stopReason": "end_turn"})),
        (
            "metadata",
            serde_json::json!({"usage": {"inputTokens": 12, "outputTokens": 2, "totalTokens": 14}, "metrics": {"latencyMs": 42}}),
        ),
    ] {
        body.extend_from_slice(&crate::mock::event_stream_message(ty, &payload));
    }
    check(
        "application/vnd.amazon.eventstream",
        &body,
        u(12, 2, 0, 0, 0),
    );
    // The same framing from an independent encoder, in the shape Bedrock sends (padding
    // fields, cache counts): tests/fixtures/usage/make_bedrock_converse_stream.py wrote
    // it and checked it with botocore's decoder. Cache tokens count into input, as for
    // Converse JSON: 21 + 2048 read + 512 written.
    check(
        "application/vnd.amazon.eventstream",
        fixture!("bedrock_converse_stream.bin"),
        u(21 + 2048 + 512, 9, 2048, 512, 0),
    );
}

#[test]
fn gemini_generate_content_and_stream() {
    // promptTokenCount already includes the cached tokens; thoughts are output.
    check(
        JSON,
        fixture!("gemini_generate.json"),
        u(1031, 7 + 24, 1024, 0, 24),
    );
    check(SSE, fixture!("gemini_stream.sse"), u(9, 8 + 24, 0, 0, 24));
    let mut p = UsageParser::for_content_type(JSON).unwrap();
    p.feed(fixture!("gemini_generate.json"));
    p.finish(true);
    assert_eq!(p.model(), Some("gemini-2.5-flash"));
}

#[test]
fn openai_compatible_providers() {
    // DeepSeek reports its cache as prompt_cache_hit_tokens too
    check(JSON, fixture!("deepseek_chat.json"), u(16, 110, 0, 0, 98));
    check(SSE, fixture!("dashscope_stream.sse"), u(22, 17, 0, 0, 0));
    check(JSON, fixture!("ark_chat.json"), u(19, 9, 0, 0, 0));
    check(
        SSE,
        fixture!("ollama_openai_stream.sse"),
        u(26, 10, 0, 0, 0),
    );
    check(
        JSON,
        fixture!("ollama_native_chat.json"),
        u(26, 298, 0, 0, 0),
    );
    let ndjson = b"{\"message\":{\"content\":\"Hel\"},\"done\":false}\n{\"message\":{\"content\":\"lo\"},\"done\":false}\n{\"done\":true,\"prompt_eval_count\":5,\"eval_count\":2}\n";
    check("application/x-ndjson", ndjson, u(5, 2, 0, 0, 0));
}

#[test]
fn a_cut_stream_is_charged_what_was_seen() {
    let body = fixture!("openai_chat_stream.sse");
    // cut before the usage chunk: the two content events
    let cut = &body[..body.windows(6).position(|w| w == b"\"stop\"").unwrap()];
    let mut p = UsageParser::for_content_type(SSE).unwrap();
    p.feed(cut);
    assert!(!p.reported());
    assert_eq!(p.finish(false).output, 2);
    // Anthropic cut after message_start and two text deltas
    let body = fixture!("anthropic_messages_stream.sse");
    let cut = &body[..body
        .windows(13)
        .position(|w| w == b"message_delta")
        .unwrap()];
    let mut p = UsageParser::for_content_type(SSE).unwrap();
    p.feed(cut);
    let got = p.finish(false);
    assert_eq!((got.input, got.output), (2073, 2));
}

#[test]
fn unknown_and_broken_bodies_are_harmless() {
    assert!(UsageParser::for_content_type("text/html").is_none());
    assert_eq!(parse(JSON, b"{not json", 3), Usage::default());
    assert_eq!(parse(SSE, b"data: {\"usage\": 5}\n\n", 4), Usage::default());
    let mut p = UsageParser::for_content_type("application/vnd.amazon.eventstream").unwrap();
    p.feed(&[0xff; 40]);
    assert_eq!(p.finish(true), Usage::default());
}

#[test]
fn finish_reasons_from_documents_and_streams() {
    let mut out = Vec::new();
    finish_reasons(
        br#"{"choices":[{"index":0,"finish_reason":"stop"},{"index":1,"finish_reason": "length"},{"finish_reason":null}]}"#,
        &mut out,
    );
    assert_eq!(out, vec!["stop".into(), "length".into()] as Vec<Box<str>>);
    // repeated values once; other keys ending the same way are not reasons
    finish_reasons(
        br#"{"stop_reason":"stop","my_reason":"x","stopReason":"end_turn"}"#,
        &mut out,
    );
    assert_eq!(out.len(), 3);
    assert_eq!(&*out[2], "end_turn");
    // Gemini's
    finish_reasons(
        br#"{"candidates":[{"finishReason":"MAX_TOKENS"}]}"#,
        &mut out,
    );
    assert_eq!(&*out[3], "MAX_TOKENS");

    // through the parser, over a stream cut at every byte
    let sse = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n";
    let mut p = UsageParser::for_content_type("text/event-stream").expect("sse");
    for b in sse.chunks(1) {
        p.feed(b);
    }
    p.finish(true);
    assert_eq!(p.finish_reasons(), &["tool_calls".into()] as &[Box<str>]);

    // Anthropic's message_delta, and a whole JSON body
    let mut p = UsageParser::for_content_type("text/event-stream").expect("sse");
    p.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":5}}\n\n");
    p.finish(true);
    assert_eq!(p.finish_reasons(), &["max_tokens".into()] as &[Box<str>]);
    let mut p = UsageParser::for_content_type("application/json").expect("json");
    p.feed(br#"{"choices":[{"finish_reason":"content_filter"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#);
    p.finish(true);
    assert_eq!(
        p.finish_reasons(),
        &["content_filter".into()] as &[Box<str>]
    );
}

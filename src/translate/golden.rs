//! Golden tests: real-shaped provider fixtures (`tests/fixtures/usage/`, and
//! `tests/fixtures/translate/` for requests and tool-call streams) through every
//! direction, compared with the translation kept in `tests/fixtures/translate/golden/`.
//! Each golden file was read and checked by hand against the mapping tables of
//! docs/unified-api.md when it was written; a change to any of them is a change in what
//! clients get and shows in review. `UPDATE_GOLDEN=1 cargo test golden` rewrites them.

use super::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The clock's and the made-up ids' parts of an answer.
fn stable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let next = [
            "\"created\":",
            "\"created_at\":",
            "msg_bdrk_",
            "msg_gem_",
            "toolu_gem_",
        ]
        .iter()
        .filter_map(|k| rest.find(k).map(|i| (i, *k)))
        .min();
        let Some((i, k)) = next else { break };
        out.push_str(&rest[..i + k.len()]);
        rest = &rest[i + k.len()..];
        let digits = if k.starts_with('"') {
            rest.trim_start_matches(|c: char| c.is_ascii_digit())
        } else if k == "msg_gem_" && !rest.starts_with(|c: char| c.is_ascii_hexdigit()) {
            rest
        } else {
            rest.trim_start_matches(|c: char| c.is_ascii_hexdigit())
        };
        if digits.len() != rest.len() {
            out.push('N');
        }
        rest = digits;
    }
    out.push_str(rest);
    out
}

fn pretty(bytes: &[u8]) -> String {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap() + "\n",
        Err(_) => String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

fn check(name: &str, got: String) {
    let got = stable(&got);
    let path = format!("{DIR}/translate/golden/{name}");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(format!("{DIR}/translate/golden")).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (UPDATE_GOLDEN=1 writes it)"));
    assert_eq!(got, want, "{name} differs from its golden file");
}

fn req(front: Api, target: Api, file: &str) -> String {
    let r = request(front, target, &fixture(file), None, &Options::default())
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    pretty(&r.body)
}

/// A provider's answer through the translator, whole and in 7-byte pieces (which must
/// agree).
fn answer(front: Api, target: Api, content_type: &str, file: &str) -> String {
    let body = fixture(file);
    let run = |size: usize| {
        let spec = ReplySpec {
            include_usage: true,
            model: "client-model".into(),
        };
        let mut r = Reply::new(front, target, 200, content_type, spec);
        let mut out = Vec::new();
        for c in body.chunks(size) {
            r.feed(c, &mut out)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        r.finish(&mut out).unwrap_or_else(|e| panic!("{file}: {e}"));
        stable(&String::from_utf8(out).unwrap())
    };
    let whole = run(body.len().max(1));
    assert_eq!(whole, run(7), "{file}: the pieces changed the answer");
    if r_is_json(&whole) {
        pretty(whole.as_bytes())
    } else {
        whole
    }
}

fn r_is_json(s: &str) -> bool {
    s.starts_with('{')
}

const JSON: &str = "application/json";
const SSE: &str = "text/event-stream";
const EVENTS: &str = "application/vnd.amazon.eventstream";

#[test]
fn golden_requests() {
    use Api::*;
    let chat = "translate/chat_request.json";
    check(
        "chat_to_anthropic.json",
        req(OpenAiChat, AnthropicMessages, chat),
    );
    check(
        "chat_to_bedrock.json",
        req(OpenAiChat, BedrockConverse, chat),
    );
    check("chat_to_gemini.json", req(OpenAiChat, Gemini, chat));
    let msgs = "translate/messages_request.json";
    check(
        "messages_to_chat.json",
        req(AnthropicMessages, OpenAiChat, msgs),
    );
    check(
        "messages_to_bedrock.json",
        req(AnthropicMessages, BedrockConverse, msgs),
    );
    check(
        "messages_to_gemini.json",
        req(AnthropicMessages, Gemini, msgs),
    );
    let resp = "translate/responses_request.json";
    check(
        "responses_to_chat.json",
        req(OpenAiResponses, OpenAiChat, resp),
    );
    check(
        "responses_to_anthropic.json",
        req(OpenAiResponses, AnthropicMessages, resp),
    );
}

#[test]
fn golden_answers() {
    use Api::*;
    for (name, front, target, ct, file) in [
        (
            "anthropic_json_to_chat.json",
            OpenAiChat,
            AnthropicMessages,
            JSON,
            "usage/anthropic_messages.json",
        ),
        (
            "anthropic_sse_to_chat.sse",
            OpenAiChat,
            AnthropicMessages,
            SSE,
            "usage/anthropic_messages_stream.sse",
        ),
        (
            "anthropic_tools_sse_to_chat.sse",
            OpenAiChat,
            AnthropicMessages,
            SSE,
            "translate/anthropic_tools_stream.sse",
        ),
        (
            "chat_json_to_messages.json",
            AnthropicMessages,
            OpenAiChat,
            JSON,
            "usage/openai_chat.json",
        ),
        (
            "chat_sse_to_messages.sse",
            AnthropicMessages,
            OpenAiChat,
            SSE,
            "usage/openai_chat_stream.sse",
        ),
        (
            "chat_tools_sse_to_messages.sse",
            AnthropicMessages,
            OpenAiChat,
            SSE,
            "translate/openai_tools_stream.sse",
        ),
        (
            "deepseek_json_to_messages.json",
            AnthropicMessages,
            OpenAiChat,
            JSON,
            "usage/deepseek_chat.json",
        ),
        (
            "dashscope_sse_to_messages.sse",
            AnthropicMessages,
            OpenAiChat,
            SSE,
            "usage/dashscope_stream.sse",
        ),
        (
            "bedrock_json_to_chat.json",
            OpenAiChat,
            BedrockConverse,
            JSON,
            "usage/bedrock_converse.json",
        ),
        (
            "bedrock_stream_to_chat.sse",
            OpenAiChat,
            BedrockConverse,
            EVENTS,
            "usage/bedrock_converse_stream.bin",
        ),
        (
            "bedrock_stream_to_messages.sse",
            AnthropicMessages,
            BedrockConverse,
            EVENTS,
            "usage/bedrock_converse_stream.bin",
        ),
        (
            "gemini_json_to_chat.json",
            OpenAiChat,
            Gemini,
            JSON,
            "usage/gemini_generate.json",
        ),
        (
            "gemini_tools_json_to_chat.json",
            OpenAiChat,
            Gemini,
            JSON,
            "translate/gemini_tools.json",
        ),
        (
            "gemini_sse_to_chat.sse",
            OpenAiChat,
            Gemini,
            SSE,
            "usage/gemini_stream.sse",
        ),
        (
            "gemini_sse_to_messages.sse",
            AnthropicMessages,
            Gemini,
            SSE,
            "usage/gemini_stream.sse",
        ),
        (
            "chat_tools_sse_to_responses.sse",
            OpenAiResponses,
            OpenAiChat,
            SSE,
            "translate/openai_tools_stream.sse",
        ),
        (
            "anthropic_tools_sse_to_responses.sse",
            OpenAiResponses,
            AnthropicMessages,
            SSE,
            "translate/anthropic_tools_stream.sse",
        ),
        (
            "anthropic_json_to_responses.json",
            OpenAiResponses,
            AnthropicMessages,
            JSON,
            "usage/anthropic_messages.json",
        ),
    ] {
        check(name, answer(front, target, ct, file));
    }
}

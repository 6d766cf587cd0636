//! Property tests (proptest, bounded: 256 cases each unless said) over the parsers that
//! read untrusted input: the SSE usage parser, the redaction engine and the config
//! parser and validator. The CONNECT / absolute-form parser's are in
//! `src/forward/head.rs` (it is private). Each property is something a user relies on:
//! the answer does not depend on how the network cut the bytes, no secret gets through
//! redaction wherever it sits, and no input makes the parsers panic.

use llm_sidecar::observability::redact::Redactor;
use llm_sidecar::usage::{Usage, UsageParser};
use proptest::prelude::*;

/// An OpenAI chat completion stream: content events, a finish event, a usage event.
fn openai_stream(words: &[String], input: u64, output: u64, model: &str) -> Vec<u8> {
    let mut s = String::new();
    for w in words {
        let chunk = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]});
        s.push_str(&format!("data: {chunk}\n\n"));
    }
    let fin = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]});
    s.push_str(&format!("data: {fin}\n\n"));
    let usage = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "model": model, "choices": [],
        "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}});
    s.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
    s.into_bytes()
}

/// An Anthropic messages stream.
fn anthropic_stream(words: &[String], input: u64, output: u64, model: &str) -> Vec<u8> {
    let mut s = String::new();
    let start = serde_json::json!({"type": "message_start", "message": {"id": "m1", "model": model,
        "usage": {"input_tokens": input, "output_tokens": 1}}});
    s.push_str(&format!("event: message_start\ndata: {start}\n\n"));
    for w in words {
        let d = serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}});
        s.push_str(&format!("event: content_block_delta\ndata: {d}\n\n"));
    }
    let md = serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": output}});
    s.push_str(&format!("event: message_delta\ndata: {md}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"));
    s.into_bytes()
}

struct Seen {
    usage: Usage,
    reasons: Vec<String>,
    model: Option<String>,
}

fn parse_in_pieces(body: &[u8], cuts: &[usize]) -> Seen {
    let mut p = UsageParser::for_content_type("text/event-stream; charset=utf-8").unwrap();
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    for c in cuts {
        p.feed(&body[at..c]);
        at = c;
    }
    p.feed(&body[at..]);
    let usage = p.finish(true);
    Seen {
        usage,
        reasons: p.finish_reasons().iter().map(|r| r.to_string()).collect(),
        model: p.model().map(str::to_string),
    }
}

fn words() -> impl Strategy<Value = Vec<String>> {
    // Any text, including quotes, backslashes, newlines and "data:" in the content.
    proptest::collection::vec(any::<String>(), 0..12)
}

proptest! {
    #[test]
    fn openai_stream_usage_does_not_depend_on_how_the_bytes_were_cut(
        w in words(), input in 0u64..1_000_000, output in 0u64..1_000_000,
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let body = openai_stream(&w, input, output, "gpt-4o-mini-2024-07-18");
        let seen = parse_in_pieces(&body, &cuts);
        prop_assert_eq!(seen.usage.input, input);
        prop_assert_eq!(seen.usage.output, output);
        prop_assert_eq!(seen.reasons, vec!["length".to_string()]);
        prop_assert_eq!(seen.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        // One byte at a time as well.
        let every: Vec<usize> = (0..body.len()).collect();
        prop_assert_eq!(parse_in_pieces(&body, &every).usage, seen.usage);
    }

    #[test]
    fn anthropic_stream_usage_does_not_depend_on_how_the_bytes_were_cut(
        w in words(), input in 0u64..1_000_000, output in 1u64..1_000_000,
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let body = anthropic_stream(&w, input, output, "claude-sonnet-4-5");
        let seen = parse_in_pieces(&body, &cuts);
        prop_assert_eq!(seen.usage.input, input);
        prop_assert_eq!(seen.usage.output, output);
        prop_assert_eq!(seen.reasons, vec!["end_turn".to_string()]);
        prop_assert_eq!(seen.model.as_deref(), Some("claude-sonnet-4-5"));
    }

    #[test]
    fn usage_parser_never_panics_on_arbitrary_bodies(
        body in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ct in prop::sample::select(vec!["text/event-stream", "application/json", "application/x-ndjson",
                                         "application/vnd.amazon.eventstream"]),
        complete in any::<bool>(),
    ) {
        let mut p = UsageParser::for_content_type(ct).unwrap();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut at = 0;
        for c in cuts {
            p.feed(&body[at..c]);
            at = c;
        }
        p.feed(&body[at..]);
        let _ = p.finish(complete);
        prop_assert!(p.finish_reasons().len() <= llm_sidecar::usage::MAX_FINISH_REASONS);
    }
}

fn secret() -> impl Strategy<Value = String> {
    // Credentials as providers issue them: long runs of key characters.
    "(sk-|sk-ant-|AKIA|)[A-Za-z0-9_\\-]{8,40}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn no_secret_survives_redaction_wherever_it_sits(
        secrets in proptest::collection::vec(secret(), 1..4),
        pieces in proptest::collection::vec(any::<String>(), 1..6),
        which in proptest::collection::vec(any::<prop::sample::Index>(), 1..6),
    ) {
        let r = Redactor::new(secrets.clone(), &[], &[], Vec::new()).unwrap();
        // Text with the secrets at random places, next to arbitrary Unicode.
        let mut text = String::new();
        for (i, p) in pieces.iter().enumerate() {
            text.push_str(p);
            if let Some(ix) = which.get(i) {
                text.push_str(ix.get::<String>(&secrets).as_str());
            }
        }
        let out = r.text(&text);
        for s in &secrets {
            prop_assert!(!out.contains(s.as_str()), "{s} survived in {out}");
        }
        prop_assert!(out.contains("[REDACTED:secret]"));
        // The same through the body path (JSON string escaping, a cap anywhere).
        let body = serde_json::json!({"messages": [{"role": "user", "content": text}]}).to_string();
        for cap in [body.len(), body.len() / 2 + 1, 7] {
            if let Some((b, _)) = r.body(body.as_bytes(), cap, true) {
                for s in &secrets {
                    prop_assert!(!b.contains(s.as_str()), "{s} survived a {cap}-byte cap in {b}");
                }
            }
        }
    }

    #[test]
    fn redaction_never_panics_and_leaves_clean_text_alone(text in any::<String>()) {
        let r = Redactor::builtins_only();
        let out = r.text(&text);
        // Masks only ever replace matches: text with no digits, '@' or key prefixes is
        // returned as it was.
        if !text.chars().any(|c| c.is_ascii_digit() || c == '@' || c == '+') && !text.contains("sk-")
            && !text.to_ascii_lowercase().contains("bearer") && !text.contains("AKIA") && !text.contains("ASIA") {
            prop_assert_eq!(out.as_ref(), text.as_str());
        }
        let _ = r.body(text.as_bytes(), text.len() / 3 + 1, false);
    }
}

/// The default config, as YAML values, for mutation; its forward CA made once.
fn default_config() -> serde_yaml::Value {
    static CA: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let ca = CA.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        llm_sidecar::forward::ca::init_dir(d.path(), &["api.openai.com", "api.anthropic.com"])
            .unwrap();
        d
    });
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sidecar.yaml")).unwrap();
    let text = text.replace(".llm-sidecar/ca", ca.path().to_str().unwrap());
    serde_yaml::from_str(&text).unwrap()
}

/// Every path (sequence of keys/indexes) in a YAML value.
fn paths(v: &serde_yaml::Value, at: Vec<serde_yaml::Value>, out: &mut Vec<Vec<serde_yaml::Value>>) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, child) in m {
                let mut p = at.clone();
                p.push(k.clone());
                out.push(p.clone());
                paths(child, p, out);
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, child) in items.iter().enumerate() {
                let mut p = at.clone();
                p.push(serde_yaml::Value::from(i as u64));
                out.push(p.clone());
                paths(child, p, out);
            }
        }
        _ => {}
    }
}

fn replace_at(
    v: &mut serde_yaml::Value,
    path: &[serde_yaml::Value],
    new: Option<serde_yaml::Value>,
) {
    let (last, parents) = path.split_last().unwrap();
    let mut cur = v;
    for k in parents {
        cur = match (cur, k) {
            (serde_yaml::Value::Mapping(m), k) => m.get_mut(k).unwrap(),
            (serde_yaml::Value::Sequence(s), serde_yaml::Value::Number(n)) => {
                &mut s[n.as_u64().unwrap() as usize]
            }
            _ => unreachable!(),
        };
    }
    match (cur, new) {
        (serde_yaml::Value::Mapping(m), Some(n)) => {
            m.insert(last.clone(), n);
        }
        (serde_yaml::Value::Mapping(m), None) => {
            m.remove(last);
        }
        (serde_yaml::Value::Sequence(s), n) => {
            let i = last.as_u64().unwrap() as usize;
            match n {
                Some(n) => s[i] = n,
                None => {
                    s.remove(i);
                }
            }
        }
        _ => unreachable!(),
    }
}

fn scalar() -> impl Strategy<Value = serde_yaml::Value> {
    prop_oneof![
        Just(serde_yaml::Value::Null),
        any::<bool>().prop_map(serde_yaml::Value::from),
        any::<i64>().prop_map(serde_yaml::Value::from),
        any::<f64>().prop_map(serde_yaml::Value::from),
        "[ -~]{0,20}".prop_map(serde_yaml::Value::from),
        "(0|1|-1|0s|1ms|30s|99999999d|1KiB|64MiB|1/s|0/m|\\$\\{env:X\\}|\\$\\{file:/nonexistent\\}|/|\\*\\.x)"
            .prop_map(serde_yaml::Value::from),
        Just(serde_yaml::Value::Sequence(vec![])),
        Just(serde_yaml::Value::Mapping(Default::default())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn config_parser_never_panics_on_arbitrary_text(text in "[ -~\\n\\t]{0,400}") {
        let _ = llm_sidecar::config::parse::parse(&text);
    }

    #[test]
    fn mutated_configs_load_or_say_where_they_are_wrong(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), proptest::option::weighted(0.8, scalar())), 1..4),
    ) {
        let mut v = default_config();
        for (ix, new) in edits {
            let mut all = Vec::new();
            paths(&v, Vec::new(), &mut all);
            if all.is_empty() {
                break;
            }
            let p = ix.get(&all).clone();
            replace_at(&mut v, &p, new);
        }
        let text = serde_yaml::to_string(&v).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidecar.yaml");
        std::fs::write(&path, &text).unwrap();
        let env: llm_sidecar::config::EnvSource = std::sync::Arc::new(|name: &str| {
            (name == "OPENAI_API_KEY").then(|| "sk-fuzz-0123456789".to_string())
        });
        match llm_sidecar::config::ConfigStore::open(&path, env, llm_sidecar::observability::metrics::Metrics::new()) {
            Ok(_) => {}
            Err(errs) => {
                prop_assert!(!errs.is_empty());
                for e in errs.iter() {
                    let s = e.to_string();
                    // Every error names what is wrong, and never echoes the key.
                    prop_assert!(s.len() > 8, "a vague error: {s:?}");
                    prop_assert!(!s.contains("sk-fuzz-0123456789"), "the key leaked: {s}");
                }
            }
        }
    }
}

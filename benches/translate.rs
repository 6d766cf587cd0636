//! The cost of translating between APIs, each beside what the pass-through path does with
//! the same bytes:
//!
//! - per request (JSON): `translate::request` for each direction, beside
//!   `usage::RequestFields::parse` (all a pass-through request's body costs);
//! - per answer event (SSE, AWS event-stream): `translate::Reply::feed` in 4 KiB chunks,
//!   beside `usage::UsageParser` over the same stream (all a pass-through stream costs);
//! - allocations per request and per event, counted by a wrapping global allocator and
//!   printed before the timings (`alloc/...` lines).
//!
//! `cargo bench --bench translate`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use llm_sidecar::translate::{self, Api, Options, Reply, ReplySpec};
use llm_sidecar::usage::{RequestFields, UsageParser};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.load(Relaxed);
    f();
    ALLOCS.load(Relaxed) - before
}

const CHAT: &[u8] = include_bytes!("../tests/fixtures/translate/chat_request.json");
const MESSAGES: &[u8] = include_bytes!("../tests/fixtures/translate/messages_request.json");
const RESPONSES: &[u8] = include_bytes!("../tests/fixtures/translate/responses_request.json");

fn requests(c: &mut Criterion) {
    use Api::*;
    let opts = Options::default();
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    let pass = |name: &str,
                path: &'static str,
                body: &'static [u8],
                g: &mut criterion::BenchmarkGroup<_>| {
        let n = allocations(|| {
            black_box(RequestFields::parse(path, body));
        });
        println!("alloc/request/{name}: {n}");
        g.bench_function(name, |b| {
            b.iter(|| black_box(RequestFields::parse(path, black_box(body))))
        });
    };
    pass("passthrough_chat", "/v1/chat/completions", CHAT, &mut g);
    pass("passthrough_messages", "/v1/messages", MESSAGES, &mut g);
    for (name, front, target, body) in [
        ("chat_to_anthropic", OpenAiChat, AnthropicMessages, CHAT),
        ("chat_to_bedrock", OpenAiChat, BedrockConverse, CHAT),
        ("chat_to_gemini", OpenAiChat, Gemini, CHAT),
        ("messages_to_chat", AnthropicMessages, OpenAiChat, MESSAGES),
        (
            "messages_to_bedrock",
            AnthropicMessages,
            BedrockConverse,
            MESSAGES,
        ),
        ("responses_to_chat", OpenAiResponses, OpenAiChat, RESPONSES),
        (
            "responses_to_anthropic",
            OpenAiResponses,
            AnthropicMessages,
            RESPONSES,
        ),
    ] {
        translate::request(front, target, body, None, &opts).unwrap();
        let n = allocations(|| {
            black_box(translate::request(front, target, body, None, &opts).unwrap());
        });
        println!("alloc/request/{name}: {n} ({} bytes in)", body.len());
        g.bench_function(name, |b| {
            b.iter(|| translate::request(front, target, black_box(body), None, &opts).unwrap())
        });
    }
    g.finish();
}

/// A stream repeated to about 256 KiB: the body of a long answer. For SSE the repeats are
/// the events between the first and the last (a stream's start and end appear once).
fn long_stream(body: &[u8], ct: &str) -> (Vec<u8>, u64) {
    if ct == "application/vnd.amazon.eventstream" {
        // Frames: 4-byte big-endian total length, then the frame. Repeat the middle ones.
        let mut frames = Vec::new();
        let mut at = 0;
        while at + 4 <= body.len() {
            let len = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
            frames.push(&body[at..at + len]);
            at += len;
        }
        return repeat_middle(&frames);
    }
    let text = std::str::from_utf8(body).unwrap();
    let events: Vec<&[u8]> = text
        .split_inclusive("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(str::as_bytes)
        .collect();
    repeat_middle(&events)
}

fn repeat_middle(events: &[&[u8]]) -> (Vec<u8>, u64) {
    // The content deltas sit between the stream's first two and last three events (one
    // and one in a short stream, Gemini's three).
    let (head, rest) = events.split_at(2.min(events.len() / 3));
    let (middle, tail) = rest.split_at(rest.len() - 3.min(events.len() / 3));
    let mut out: Vec<u8> = head.concat();
    let mut n = head.len() as u64 + tail.len() as u64;
    while out.len() < 256 * 1024 && !middle.is_empty() {
        for e in middle {
            out.extend_from_slice(e);
            n += 1;
        }
    }
    out.extend_from_slice(&tail.concat());
    (out, n)
}

fn answers(c: &mut Criterion) {
    use Api::*;
    const SSE: &str = "text/event-stream";
    const EVENTS: &str = "application/vnd.amazon.eventstream";
    let mut g = c.benchmark_group("answer_event");
    for (name, front, target, ct, body) in [
        (
            "anthropic_sse_to_chat",
            OpenAiChat,
            AnthropicMessages,
            SSE,
            &include_bytes!("../tests/fixtures/usage/anthropic_messages_stream.sse")[..],
        ),
        (
            "chat_sse_to_messages",
            AnthropicMessages,
            OpenAiChat,
            SSE,
            &include_bytes!("../tests/fixtures/usage/openai_chat_stream.sse")[..],
        ),
        (
            "chat_sse_to_responses",
            OpenAiResponses,
            OpenAiChat,
            SSE,
            &include_bytes!("../tests/fixtures/usage/openai_chat_stream.sse")[..],
        ),
        (
            "bedrock_events_to_chat",
            OpenAiChat,
            BedrockConverse,
            EVENTS,
            &include_bytes!("../tests/fixtures/usage/bedrock_converse_stream.bin")[..],
        ),
        (
            "gemini_sse_to_chat",
            OpenAiChat,
            Gemini,
            SSE,
            &include_bytes!("../tests/fixtures/usage/gemini_stream.sse")[..],
        ),
    ] {
        let (stream, events) = long_stream(body, ct);
        let spec = ReplySpec {
            include_usage: true,
            model: "client-model".into(),
        };
        let translated = |out: &mut Vec<u8>| {
            let mut r = Reply::new(front, target, 200, ct, spec.clone());
            for c in stream.chunks(4096) {
                r.feed(c, out).unwrap();
                out.clear();
            }
            r.finish(out).unwrap();
        };
        let passthrough = || {
            let mut p = UsageParser::for_content_type(ct).unwrap();
            for c in stream.chunks(4096) {
                p.feed(c);
            }
            p.finish(true)
        };
        let mut out = Vec::with_capacity(64 * 1024);
        translated(&mut out);
        let t = allocations(|| translated(&mut out));
        let p = allocations(|| {
            black_box(passthrough());
        });
        println!(
            "alloc/answer_event/{name}: {:.2} per event translated, {:.2} passed through ({events} events, {} bytes)",
            t as f64 / events as f64,
            p as f64 / events as f64,
            stream.len()
        );
        g.throughput(Throughput::Elements(events));
        g.bench_function(format!("{name}/passthrough"), |b| b.iter(passthrough));
        g.bench_function(format!("{name}/translated"), |b| {
            b.iter(|| translated(&mut out))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = requests, answers
}
criterion_main!(benches);

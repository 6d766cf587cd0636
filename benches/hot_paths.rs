//! Micro-benchmarks of per-request work, each beside a naive way of doing the same:

//!
//! - route lookup in the compiled table (pre-lowercased patterns, no allocation) vs. a
//!   lookup that lowercases and splits per request;
//! - the request guards (header size, framing, dot segments);
//! - building the upstream path.
//!
//! `cargo bench --bench hot_paths`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use llm_sidecar::config::compile::{compile, LoadContext};
use llm_sidecar::observability::metrics::Metrics;
use llm_sidecar::proxy::guards;
use llm_sidecar::upstream::dns::DnsRegistry;
use pingora::http::RequestHeader;

fn snapshot() -> llm_sidecar::config::Snapshot {
    // Twelve routes, the one we look up near the end: a realistic worst case.
    let mut yaml = String::from("version: 1\nproviders:\n");
    for i in 0..12 {
        yaml.push_str(&format!(
            "  p{i}: {{ kind: openai, base_url: \"https://api{i}.example.com/v1\" }}\n"
        ));
    }
    yaml.push_str("routes:\n");
    for i in 0..12 {
        yaml.push_str(&format!(
            "  - match: {{ path_prefix: /provider{i}/v1, host: \"*.svc{i}.local\" }}\n    provider: p{i}\n"
        ));
    }
    let dns = DnsRegistry::default();
    let metrics = Metrics::new();
    let env = |_: &str| None;
    let breakers = llm_sidecar::resilience::breaker::BreakerRegistry::default();
    let ctx = LoadContext {
        env: &env,
        mode: Default::default(),
        dns: &dns,
        breakers: &breakers,
        limits: &llm_sidecar::limits::LimitRegistry::default(),
        metrics: &metrics,
    };
    compile(&yaml, &ctx).expect("bench config is valid")
}

/// What a first attempt might do: allocate a lowercase host and split the path per request.
fn naive_find<'a>(
    patterns: &'a [(String, String)],
    host: &str,
    path: &str,
) -> Option<&'a (String, String)> {
    let host = host.to_lowercase();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    patterns.iter().find(|(h, p)| {
        let want: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
        host.ends_with(h.trim_start_matches('*'))
            && segments.len() >= want.len()
            && segments[..want.len()] == want[..]
    })
}

fn request() -> RequestHeader {
    let mut r = RequestHeader::build("POST", b"/provider10/v1/chat/completions?x=1", None).unwrap();
    r.insert_header("host", "app.svc10.local:8080").unwrap();
    r.insert_header("content-type", "application/json").unwrap();
    r.insert_header("content-length", "512").unwrap();
    r.insert_header("authorization", "Bearer sk-app-placeholder")
        .unwrap();
    r.insert_header("user-agent", "OpenAI/Python 1.54.0")
        .unwrap();
    r.insert_header("x-stainless-lang", "python").unwrap();
    r
}

fn benches(c: &mut Criterion) {
    let snap = snapshot();
    let req = request();
    let patterns: Vec<(String, String)> = (0..12)
        .map(|i| (format!("*.svc{i}.local"), format!("/provider{i}/v1")))
        .collect();

    c.bench_function("route/compiled_table", |b| {
        b.iter(|| {
            let host = llm_sidecar::routing::request_host(black_box(&req));
            snap.routes
                .find(host, black_box(req.uri.path()))
                .map(|r| r.index)
        })
    });
    c.bench_function("route/naive_lowercase_split", |b| {
        b.iter(|| {
            naive_find(
                &patterns,
                black_box("app.svc10.local"),
                black_box(req.uri.path()),
            )
            .map(|p| p.0.len())
        })
    });
    c.bench_function("guards/check", |b| {
        b.iter(|| guards::check(black_box(&req), None, &snap.guards).is_ok())
    });
    let route = snap
        .routes
        .find(Some("app.svc10.local"), "/provider10/v1/chat/completions")
        .unwrap();
    c.bench_function("route/upstream_path", |b| {
        b.iter(|| {
            route.upstream_path(
                black_box("/provider10/v1/chat/completions"),
                black_box(Some("x=1")),
            )
        })
    });
    c.bench_function("route/upstream_path_naive_format", |b| {
        b.iter(|| {
            format!(
                "{}{}?{}",
                "/v1",
                black_box("/provider10/v1/chat/completions").replacen("/provider10/v1", "", 1),
                black_box("x=1")
            )
        })
    });
}

criterion_group!(hot, benches);
criterion_main!(hot);

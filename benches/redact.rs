//! Audit-log redaction throughput on a 4 KiB and a 256 KiB chat body (MB/s), with
//! every built-in rule, 20 secrets by value and one JSON-path rule; and the same bodies
//! with nothing to mask (the common case: one RegexSet scan, one automaton pass).
//!
//! `cargo bench --bench redact`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llm_sidecar::observability::redact::{builtin_names, JsonPath, Mask, Redactor};

/// A chat request of about `size` bytes; with `pii`, every 1 KiB of text carries an
/// email, a mainland mobile number, a card number and an API key.
fn body(size: usize, pii: bool) -> Vec<u8> {
    let mut text = String::new();
    let filler = "The quarterly report covers revenue, churn and the hiring plan for next year. ";
    while text.len() + 200 < size {
        text.push_str(filler);
        if pii && text.len() % 1024 < filler.len() {
            text.push_str("contact jane.doe@example.com or 13912345678, card 4111 1111 1111 1111, key sk-proj-AbCdEf0123456789xyz. ");
        }
    }
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "user": "user-1234",
        "messages": [{"role": "user", "content": text}],
    }))
    .unwrap()
}

fn redactor() -> Redactor {
    let names: Vec<String> = builtin_names().map(String::from).collect();
    let secrets = (0..20).map(|i| format!("provider-secret-value-{i:04}-abcdef"));
    let paths = vec![JsonPath::parse("$.user", Mask::Full).unwrap()];
    Redactor::new(secrets, &names, &[], paths).unwrap()
}

fn bench(c: &mut Criterion) {
    let r = redactor();
    let mut g = c.benchmark_group("redact");
    for (label, size) in [("4KiB", 4 << 10), ("256KiB", 256 << 10)] {
        for pii in [true, false] {
            let b = body(size, pii);
            g.throughput(Throughput::Bytes(b.len() as u64));
            let id = format!("{label}/{}", if pii { "pii" } else { "clean" });
            g.bench_with_input(BenchmarkId::from_parameter(id), &b, |bench, b| {
                bench.iter(|| r.body(b, usize::MAX, true).unwrap());
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

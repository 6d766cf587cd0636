//! Limiter admission under contention, beside a `Mutex<HashMap>` token bucket, and the
//! usage parser's throughput.
//!
//! `cargo bench --bench limits`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llm_sidecar::limits::gcra::{now_ns, Gcra};
use llm_sidecar::usage::UsageParser;
use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// The naive bucket: tokens and last refill behind one lock, looked up by key.
struct NaiveBuckets {
    map: Mutex<HashMap<String, (f64, Instant)>>,
    rate: f64,
    burst: f64,
}

impl NaiveBuckets {
    fn take(&self, key: &str) -> bool {
        let mut m = self.map.lock().unwrap();
        let now = Instant::now();
        let e = m.entry(key.to_string()).or_insert((self.burst, now));
        e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * self.rate).min(self.burst);
        e.1 = now;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

const OPS: u64 = 20_000;

fn contended<F: Fn() + Send + Sync + 'static>(threads: usize, iters: u64, f: Arc<F>) -> Duration {
    let per = (iters * OPS) / threads as u64;
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (f, b) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                for _ in 0..per {
                    f();
                }
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    t.elapsed()
}

fn admission(c: &mut Criterion) {
    let mut g = c.benchmark_group("limiter_admission");
    g.throughput(Throughput::Elements(OPS));
    for threads in [1usize, 2, 4, 8] {
        let gcra = Arc::new(Gcra::new(u64::MAX / 4, Duration::from_secs(1)));
        g.bench_with_input(
            BenchmarkId::new("gcra_atomic", threads),
            &threads,
            |b, &t| {
                let gcra = gcra.clone();
                b.iter_custom(move |iters| {
                    let g2 = gcra.clone();
                    contended(
                        t,
                        iters,
                        Arc::new(move || {
                            let _ = g2.try_take(now_ns(), 1);
                        }),
                    )
                })
            },
        );
        let naive = Arc::new(NaiveBuckets {
            map: Mutex::new(HashMap::new()),
            rate: 1e12,
            burst: 1e12,
        });
        g.bench_with_input(
            BenchmarkId::new("mutex_hashmap", threads),
            &threads,
            |b, &t| {
                let naive = naive.clone();
                b.iter_custom(move |iters| {
                    let n2 = naive.clone();
                    contended(
                        t,
                        iters,
                        Arc::new(move || {
                            let _ = n2.take("tenant-a");
                        }),
                    )
                })
            },
        );
    }
    g.finish();
}

fn usage_parse(c: &mut Criterion) {
    let sse = include_bytes!("../tests/fixtures/usage/openai_chat_stream.sse");
    let anthropic = include_bytes!("../tests/fixtures/usage/anthropic_messages_stream.sse");
    let json = include_bytes!("../tests/fixtures/usage/openai_chat.json");
    let mut g = c.benchmark_group("usage_parser");
    for (name, ct, body) in [
        ("openai_sse", "text/event-stream", &sse[..]),
        ("anthropic_sse", "text/event-stream", &anthropic[..]),
        ("openai_json", "application/json", &json[..]),
    ] {
        // Repeat to ~256 KiB, fed in 4 KiB chunks as a response arrives.
        let mut big = Vec::new();
        while big.len() < 256 * 1024 {
            big.extend_from_slice(body);
        }
        if ct == "application/json" {
            big = body.to_vec();
        }
        g.throughput(Throughput::Bytes(big.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut p = UsageParser::for_content_type(ct).unwrap();
                for c in big.chunks(4096) {
                    p.feed(c);
                }
                p.finish(true)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = admission, usage_parse
}
criterion_main!(benches);

//! Request-rate, concurrency and token-budget limits against the mock provider.

use crate::support::*;
use llm_sidecar::mock::MockOptions;
use std::time::Duration;

fn config(mock: &str, limits: &str) -> String {
    format!(
        r#"tenant: {{ id: team-a }}
limits:
  rules:
{limits}
providers:
  openai:
    kind: openai
    base_url: {mock}/v1
    auth: {{ type: bearer, token: sk-limits }}
  claude:
    kind: anthropic
    base_url: {mock}
    auth: {{ type: header, name: x-api-key, value: sk-limits }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: openai
  - match: {{ path_prefix: /anthropic }}
    provider: claude
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_request_limit_gets_exactly_the_excess_as_429s() {
    let m = default_mock().await;
    let s = TestSidecar::start(&config(
        &m.url(),
        "    - { name: tenant-rate, scope: [tenant], requests: { rate: 5/m, burst: 5 } }",
    ))
    .await;
    let mut ok = 0;
    let mut limited = Vec::new();
    for _ in 0..12 {
        let r = s.chat("/openai/v1/chat/completions", false).await;
        match r.status().as_u16() {
            200 => ok += 1,
            429 => limited.push(r),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, limited.len()), (5, 7));
    // the rule's decisions, both ways
    s.assert_metric(
        r#"llm_sidecar_limit_admitted_total{rule="tenant-rate"}"#,
        5.0,
    )
    .await;
    s.assert_metric(
        r#"llm_sidecar_limited_total{kind="requests",rule="tenant-rate"}"#,
        7.0,
    )
    .await;
    let r = &limited[0];
    assert_eq!(r.headers()["x-llm-sidecar-error"], "rate_limited");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=12).contains(&retry),
        "one request refills in 12 s: {retry}"
    );
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "5");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    assert!(r.headers().contains_key("x-ratelimit-reset-requests"));
    assert_eq!(m.request_count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_routes_get_anthropic_shaped_429s() {
    let m = default_mock().await;
    let s = TestSidecar::start(&config(
        &m.url(),
        "    - { name: tiny, match: { routes: [claude] }, tokens: { limit: 50, per: 1h } }",
    ))
    .await;
    let r = s
        .client
        .post(s.url("/anthropic/v1/messages"))
        .json(&serde_json::json!({"model": "claude-3-5-haiku-latest", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["anthropic-ratelimit-tokens-limit"], "50");
    assert!(r.headers()["anthropic-ratelimit-tokens-reset"]
        .to_str()
        .unwrap()
        .ends_with('Z'));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    // The OpenAI route is not matched by the rule.
    assert_eq!(
        s.chat("/openai/v1/chat/completions", false).await.status(),
        200
    );
}

/// 50 concurrent streams against a 10k-token budget: reserving up front keeps the spend
/// within one request's reservation of the budget; charging after the fact (the switch
/// other gateways behave like) lets every request in and overshoots.
async fn spend(accounting: &str) -> (f64, usize) {
    let m = mock(MockOptions {
        chunks: 400,
        interval: Duration::from_millis(1),
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&config(
        &m.url(),
        &format!("    - {{ name: budget, tokens: {{ limit: 10000, per: 1h, accounting: {accounting} }} }}"),
    ))
    .await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url) = (s.client.clone(), s.url("/openai/v1/chat/completions"));
        tasks.push(tokio::spawn(long_stream(client, url)));
    }
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            admitted += 1;
        }
    }
    // Usage is counted when each exchange ends, just after its last byte: wait until all
    // 50 are (an under-count here would make "within budget" easier to pass).
    s.assert_metric(r#"llm_sidecar_requests_total{route="openai"}"#, 50.0)
        .await;
    let metrics = s.metrics().await;
    let used = |ty: &str| {
        metric_value(
            &metrics,
            &format!(
                "llm_sidecar_tokens_total{{provider=\"openai\",route=\"openai\",type=\"{ty}\"}}"
            ),
        )
    };
    (used("input") + used("output"), admitted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserving_tokens_keeps_concurrent_streams_within_the_budget() {
    let (reserved, admitted_r) = spend("reserve").await;
    let (after, admitted_a) = spend("after").await;
    println!("reserve: {reserved} tokens, {admitted_r} admitted; after: {after} tokens, {admitted_a} admitted");
    // One request reserves its body estimate (~30) + 400 output tokens.
    assert!(
        reserved <= 10_000.0 + 430.0,
        "reserve overshot: {reserved} ({admitted_r} admitted)"
    );
    assert!(
        admitted_r >= 20,
        "the budget fits ~24 requests, {admitted_r} got in"
    );
    assert!(
        after > 15_000.0,
        "after-the-fact should overshoot here: {after} ({admitted_a} admitted)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_queue_then_refuse() {
    let m = mock(MockOptions {
        latency: Duration::from_millis(1000),
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&config(
        &m.url(),
        "    - { name: one-at-a-time, concurrency: { max: 1, queue: 1, queue_timeout: 3s } }",
    ))
    .await;
    let mut tasks = Vec::new();
    for i in 0..3 {
        let client = s.client.clone();
        let url = s.url("/openai/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&chat_body(false))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
        // In order: the first is at the provider, the second is queued (in flight in
        // the sidecar, not at the provider), then the third comes.
        match i {
            0 => {
                eventually("the first at the provider", WAIT, || async {
                    m.request_count() == 1
                })
                .await
            }
            1 => s.assert_metric("llm_sidecar_requests_in_flight", 2.0).await,
            _ => {}
        }
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    // one runs, one waits its turn, the third finds the queue full
    assert_eq!(statuses, vec![200, 200, 429]);
}

/// `scope: [key]` counts per provider key, checked once the attempt has picked its key:
/// a key at its limit is passed over for the next, and only when every key is spent does
/// the client get a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_scoped_limits_spread_requests_over_the_pool() {
    let m = default_mock().await;
    let s = TestSidecar::start(&format!(
        r#"providers:
  pool:
    kind: openai
    base_url: {}/v1
    auth:
      type: bearer
      strategy: weighted
      keys:
        - {{ name: big, key: key-big, weight: 9 }}
        - {{ name: small, key: key-small, weight: 1 }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: pool
limits:
  rules:
    - {{ name: per-key, scope: [key], requests: {{ rate: 3/m, burst: 3 }} }}
"#,
        m.url()
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = s.chat("/openai/v1/chat/completions", false).await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert_eq!(r.headers()["x-llm-sidecar-error"], "rate_limited");
            assert!(r.headers().contains_key("retry-after"));
            assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
    let keys: Vec<String> = m
        .recorded()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_string())
        .collect();
    let count = |k: &str| keys.iter().filter(|h| h.ends_with(k)).count();
    // the weighted pool prefers `big`; its limit sends the overflow to `small`
    assert_eq!((count("key-big"), count("key-small")), (3, 3), "{keys:?}");
    s.assert_metric(
        r#"llm_sidecar_limited_total{kind="requests",rule="per-key"}"#,
        2.0,
    )
    .await;
}

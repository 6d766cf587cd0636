//! Retries, fallback and the circuit breaker, against scripted upstreams and the mock.

use crate::support::upstreams::{closed_port, scripted, Scripted};
use crate::support::*;
use std::time::Duration;

fn config(addr: &str, route_extra: &str, provider_extra: &str) -> String {
    format!(
        r#"providers:
  primary:
    kind: openai
    base_url: http://{addr}
    auth: {{ type: bearer, token: sk-primary }}
{provider_extra}
routes:
  - match: {{ path_prefix: /v1 }}
    provider: primary
    rewrite_prefix: /v1
{route_extra}
"#
    )
}

fn retries(metrics: &str, reason: &str) -> f64 {
    metric_value(
        metrics,
        &format!("llm_sidecar_retries_total{{reason=\"{reason}\",route=\"primary\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_then_200_succeeds_with_two_attempts() {
    let (addr, seen) = scripted(vec![Scripted::status(503)]).await;
    let s = TestSidecar::start(&config(&addr.to_string(), "", "")).await;
    let r = s.chat("/v1/chat/completions", false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(seen.lock().unwrap().at.len(), 2);
    assert_eq!(retries(&s.metrics().await, "503"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let (addr, seen) = scripted(vec![Scripted {
        retry_after: Some("1"),
        ..Scripted::status(429)
    }])
    .await;
    let s = TestSidecar::start(&config(&addr.to_string(), "", "")).await;
    let r = s.chat("/v1/chat/completions", false).await;
    assert_eq!(r.status(), 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.at.len(), 2);
    let gap = seen.at[1] - seen.at[0];
    assert!(gap >= Duration::from_secs(1), "waited only {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_beyond_the_cap_is_passed_to_the_client() {
    let (addr, seen) = scripted(vec![Scripted {
        retry_after: Some("120"),
        ..Scripted::status(429)
    }])
    .await;
    let s = TestSidecar::start(&config(&addr.to_string(), "", "")).await;
    let r = s.chat("/v1/chat/completions", false).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "120");
    assert_eq!(seen.lock().unwrap().at.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried() {
    for status in [400, 401, 403, 404, 413, 422] {
        let (addr, seen) = scripted(vec![Scripted::status(status)]).await;
        let s = TestSidecar::start(&config(&addr.to_string(), "", "")).await;
        let r = s.chat("/v1/chat/completions", false).await;
        assert_eq!(r.status(), status);
        assert_eq!(seen.lock().unwrap().at.len(), 1, "{status} was retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_after_its_first_event_is_not_retried() {
    let (addr, seen) = scripted(vec![Scripted {
        break_stream: true,
        ..Scripted::status(200)
    }])
    .await;
    let s = TestSidecar::start(&config(&addr.to_string(), "", "")).await;
    let r = s.chat("/v1/chat/completions", true).await;
    assert_eq!(r.status(), 200);
    let (text, clean) = read_stream(r).await;
    assert!(text.contains("Hel"), "{text}");
    assert!(
        !clean,
        "the client must see the stream cut, not a clean end"
    );
    assert_eq!(seen.lock().unwrap().at.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_then_answered() {
    let dead = closed_port();
    let s = TestSidecar::start(&config(
        &dead.to_string(),
        "    retry: { max_attempts: 3, backoff: 10ms }\n",
        "    breaker: { enabled: false }\n",
    ))
    .await;
    let r = s.chat("/v1/chat/completions", false).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "upstream_connect");
    assert_eq!(retries(&s.metrics().await, "connect"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_retries_to_a_share_of_requests() {
    let (addr, seen) = scripted((0..100).map(|_| Scripted::status(503)).collect()).await;
    let s = TestSidecar::start(&config(
        &addr.to_string(),
        "    retry: { max_attempts: 3, backoff: 1ms, budget_ratio: 0.1, budget_min_per_second: 0 }\n",
        "    breaker: { enabled: false }\n",
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(s.chat("/v1/chat/completions", false).await.status(), 503);
    }
    // 20 requests deposit 2 retries' worth; without the budget it would be 40.
    assert_eq!(seen.lock().unwrap().at.len(), 22);
    assert_eq!(retries(&s.metrics().await, "503"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_falls_back_with_the_model_rewritten() {
    let dead = closed_port();
    let m = default_mock().await;
    let yaml = format!(
        r#"providers:
  primary:
    kind: openai
    base_url: http://{dead}/v1
    breaker: {{ consecutive_failures: 2, cooldown: 1m }}
  backup:
    kind: openai_compatible
    base_url: {mock}/v1
    auth: {{ type: bearer, token: sk-backup }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: primary
    retry: {{ max_attempts: 1 }}
    fallback:
      - {{ provider: backup, model: backup-model }}
"#,
        mock = m.url()
    );
    let s = TestSidecar::start(&yaml).await;
    for _ in 0..4 {
        let r = s.chat("/openai/v1/chat/completions", false).await;
        assert_eq!(r.status(), 200);
    }
    let rec = m.recorded();
    assert_eq!(rec.len(), 4);
    assert_eq!(rec[0].path, "/v1/chat/completions");
    assert_eq!(rec[0].header("authorization"), Some("Bearer sk-backup"));
    let body: serde_json::Value = serde_json::from_slice(&rec[0].body).unwrap();
    assert_eq!(body["model"], "backup-model");
    assert_eq!(body["messages"][0]["content"], "Say hello");
    s.assert_metric(
        "llm_sidecar_fallbacks_total{provider=\"backup\",route=\"primary\"}",
        4.0,
    )
    .await;
    // After two failures the primary's breaker opened: the last requests went straight
    // to the fallback without trying it.
    s.assert_metric("llm_sidecar_breaker_state{provider=\"primary\"}", 1.0)
        .await;
    s.assert_metric(
        "llm_sidecar_breaker_rejected_total{provider=\"primary\"}",
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_sheds_half_opens_and_closes() {
    let (addr, seen) = scripted((0..3).map(|_| Scripted::status(500)).collect()).await;
    let s = TestSidecar::start(&config(
        &addr.to_string(),
        "    retry: { max_attempts: 1 }\n",
        "    breaker: { consecutive_failures: 3, cooldown: 500ms }\n",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(s.chat("/v1/chat/completions", false).await.status(), 500);
    }
    // Open: shed without an upstream attempt.
    let r = s.chat("/v1/chat/completions", false).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "circuit_open");
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(seen.lock().unwrap().at.len(), 3);
    let ready = s.get_text(&s.admin("/readyz")).await;
    assert!(ready.contains("breaker primary: open"), "{ready}");
    // After the cooldown one probe goes through; it succeeds and the breaker closes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s.chat("/v1/chat/completions", false).await.status(), 200);
    assert_eq!(seen.lock().unwrap().at.len(), 4);
    s.assert_metric("llm_sidecar_breaker_state{provider=\"primary\"}", 0.0)
        .await;
    s.assert_metric(
        "llm_sidecar_breaker_opened_total{provider=\"primary\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_counted_per_route_and_provider_for_json_and_sse() {
    let m = default_mock().await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    assert_eq!(
        s.chat("/openai/v1/chat/completions", false).await.status(),
        200
    );
    let r = s.stream_with_usage("/openai/v1/chat/completions").await;
    let (_, clean) = read_stream(r).await;
    assert!(clean);
    // Usage is recorded when the exchange ends, which can be just after the client has
    // read the last byte.
    let output = r#"llm_sidecar_tokens_total{provider="mock",route="mock",type="output"}"#;
    s.wait_metric(output, ">= 16.0", |v| v >= 16.0).await;
    let metrics = s.metrics().await;
    let t = |ty: &str| {
        metric_value(
            &metrics,
            &format!("llm_sidecar_tokens_total{{provider=\"mock\",route=\"mock\",type=\"{ty}\"}}"),
        )
    };
    // The mock reports 8 completion tokens per answer and its prompt count.
    assert_eq!(t("output"), 16.0, "{metrics}");
    assert!(t("input") > 0.0, "{metrics}");
}

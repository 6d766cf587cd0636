//! Trace context, metrics and the audit log, seen from outside.

use crate::support::*;
use llm_sidecar::mock::MockOptions;
use llm_sidecar::observability::trace::parse_traceparent;
use std::time::Duration;

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// (trace id, span id, flags) of what the upstream received.
fn upstream_trace(r: &llm_sidecar::mock::Recorded) -> (String, String, u8) {
    let v = r.header("traceparent").expect("a traceparent upstream");
    let (t, s, f) = parse_traceparent(v).unwrap_or_else(|| panic!("invalid: {v}"));
    (hex::encode(t), hex::encode(s), f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_joined_or_started_and_each_attempt_is_a_new_span() {
    let logs = capture_logs();
    let m = mock(MockOptions {
        fail_every: Some(2),
        record: 16,
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&openai_to(&m.url(), "sk-trace")).await;
    let url = s.url("/openai/v1/chat/completions");
    let with_trace = |parent: &'static str, state: &'static str| {
        s.client
            .post(&url)
            .header("traceparent", parent)
            .header("tracestate", state)
            .json(&chat_body(false))
            .send()
    };

    // 1: the client's trace is joined; tracestate passes untouched
    let r = with_trace(CLIENT, "vendor=abc,other=1").await.unwrap();
    assert_eq!(r.status(), 200);
    let rec = m.recorded();
    let (trace, span, flags) = upstream_trace(&rec[0]);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        span, "00f067aa0ba902b7",
        "a new span, child of the client's"
    );
    assert_eq!(flags, 1);
    assert_eq!(rec[0].header("tracestate"), Some("vendor=abc,other=1"));

    // 2: no traceparent: a trace is started; the mock fails the first attempt (500), so
    // two attempts carry the same trace with different spans
    let r = s.chat("/openai/v1/chat/completions", false).await;
    assert_eq!(r.status(), 200);
    let rec = m.recorded();
    assert_eq!(rec.len(), 3, "one retry");
    let (t1, s1, _) = upstream_trace(&rec[1]);
    let (t2, s2, _) = upstream_trace(&rec[2]);
    assert_eq!(t1, t2);
    assert_ne!(s1, s2);
    assert_ne!(t1, trace);
    assert!(rec[1].header("tracestate").is_none());

    // 3: a malformed traceparent is not passed on: a new trace replaces it
    let r = with_trace(
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "vendor=abc",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let rec = m.recorded();
    let (t3, _, _) = upstream_trace(rec.last().unwrap());
    assert_ne!(t3, "00000000000000000000000000000000");
    assert!(rec.last().unwrap().header("tracestate").is_none());

    s.shutdown().await;
    let text = logs.text();
    for t in [&trace, &t1, &t3] {
        assert!(text.contains(t.as_str()), "trace id {t} in the request log");
    }
}

/// The `/metrics` text passes `promtool check metrics` (the Debian package), and the
/// per-call series move by what the responses say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genai_metrics_move_by_the_right_amounts_and_pass_promtool() {
    let m = mock(MockOptions {
        chunks: 5,
        interval: std::time::Duration::from_millis(30),
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&format!(
        "tenant: {{ id: team-obs }}\n{}",
        openai_to(&m.url(), "sk-obs")
    ))
    .await;
    // non-streaming: usage from the JSON body
    let r = s.chat("/openai/v1/chat/completions", false).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let (in1, out1) = (
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
        v["usage"]["completion_tokens"].as_u64().unwrap(),
    );
    let model = v["model"].as_str().unwrap().to_string();
    // streaming with include_usage
    let r = s.stream_with_usage("/openai/v1/chat/completions").await;
    let (text, _) = read_stream(r).await;
    let usage_line = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .expect("a usage event");
    let (in2, out2) = (
        usage_line["usage"]["prompt_tokens"].as_u64().unwrap(),
        usage_line["usage"]["completion_tokens"].as_u64().unwrap(),
    );

    // Written when each exchange ends, just after the client's last byte: polled.
    let genai = |name: &str, ty: &str| {
        format!(
            "{name}{{gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o-mini\",gen_ai_response_model=\"{model}\",gen_ai_token_type=\"{ty}\"}}"
        )
    };
    s.assert_metric(&genai("gen_ai_client_token_usage_count", "input"), 2.0)
        .await;
    s.assert_metric(
        &genai("gen_ai_client_token_usage_sum", "input"),
        (in1 + in2) as f64,
    )
    .await;
    s.assert_metric(
        &genai("gen_ai_client_token_usage_sum", "output"),
        (out1 + out2) as f64,
    )
    .await;
    s.assert_metric(
        r#"llm_sidecar_tenant_tokens_total{model="gpt-4o-mini",tenant="team-obs",type="output"}"#,
        (out1 + out2) as f64,
    )
    .await;
    let series = "{model=\"gpt-4o-mini\",provider=\"mock\",route=\"mock\"}";
    // only the stream has a time to first token: 5 chunks 30 ms apart
    s.assert_metric(
        &format!("llm_sidecar_time_to_first_token_seconds_count{series}"),
        1.0,
    )
    .await;
    s.assert_metric(
        r#"llm_sidecar_llm_requests_total{model="gpt-4o-mini",provider="mock",route="mock",status_class="2xx",tenant="team-obs"}"#,
        2.0,
    )
    .await;
    let metrics = s.metrics().await;
    let ttft = metric_value(
        &metrics,
        &format!("llm_sidecar_time_to_first_token_seconds_sum{series}"),
    );
    assert!(ttft > 0.0 && ttft < 0.5, "ttft {ttft}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("llm_sidecar_uptime_seconds ")),
        "uptime is exported"
    );

    // promtool lints the exposition
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &metrics).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (Debian package prometheus): run scripts/setup.sh --test");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn otlp_config(mock: &str, endpoint: &str) -> String {
    format!(
        r#"telemetry:
  otlp_endpoint: "{endpoint}"
  service_name: checkout-sidecar
  delay: 50ms
  timeout: 500ms
providers:
  mock:
    kind: openai
    base_url: {mock}/v1
    auth: {{ type: bearer, token: sk-otlp }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: mock
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_upstream_attempt_is_exported_as_a_client_span_with_genai_attributes() {
    use crate::support::otlp::OtlpReceiver;
    let rx = OtlpReceiver::start().await;
    let m = mock(MockOptions {
        fail_every: Some(3),
        record: 16,
        chunks: 3,
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&otlp_config(&m.url(), &rx.endpoint())).await;
    let url = s.url("/openai/v1/chat/completions");
    let post = |stream: bool| {
        let mut b = chat_body(stream);
        b["model"] = "gpt-4o-mini".into();
        if stream {
            b["stream_options"] = serde_json::json!({"include_usage": true});
        }
        s.client
            .post(&url)
            .header("traceparent", CLIENT)
            .json(&b)
            .send()
    };
    // 1 plain, 2 streamed, 3 fails (500) and is retried (4)
    assert_eq!(post(false).await.unwrap().status(), 200);
    let (_, done) = read_stream(post(true).await.unwrap()).await;
    assert!(done);
    assert_eq!(post(false).await.unwrap().status(), 200);
    eventually("4 spans exported", Duration::from_secs(10), || async {
        rx.spans().len() >= 4
    })
    .await;
    let spans = rx.spans();
    assert_eq!(spans.len(), 4, "one span per attempt");
    assert!(rx
        .content_types
        .lock()
        .unwrap()
        .iter()
        .all(|c| c == "application/x-protobuf"));
    let sent = m.recorded();
    for (i, got) in spans.iter().enumerate() {
        let sp = &got.span;
        assert_eq!(got.service, "checkout-sidecar");
        assert_eq!(
            hex::encode(&sp.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            hex::encode(&sp.parent_span_id),
            "00f067aa0ba902b7",
            "child of the client's span"
        );
        // the span id is the one the provider saw in traceparent
        let (_, upstream_span, _) = upstream_trace(&sent[i]);
        assert_eq!(hex::encode(&sp.span_id), upstream_span);
        assert_eq!(sp.kind, 3, "SPAN_KIND_CLIENT");
        assert_eq!(sp.name, "chat gpt-4o-mini");
        assert!(sp.end_time_unix_nano >= sp.start_time_unix_nano);
        assert_eq!(got.str_attr("gen_ai.operation.name"), Some("chat"));
        assert_eq!(got.str_attr("gen_ai.provider.name"), Some("openai"));
        assert_eq!(got.str_attr("gen_ai.request.model"), Some("gpt-4o-mini"));
        assert_eq!(got.str_attr("server.address"), Some("127.0.0.1"));
        assert_eq!(
            got.int_attr("server.port"),
            Some(i64::from(m.addr().port()))
        );
        assert_eq!(got.str_attr("llm_sidecar.route"), Some("mock"));
    }
    for ok in [&spans[0], &spans[1], &spans[3]] {
        assert_eq!(ok.str_attr("gen_ai.response.model"), Some("gpt-4o-mini"));
        assert!(ok.int_attr("gen_ai.usage.input_tokens").unwrap() > 0);
        assert_eq!(ok.int_attr("gen_ai.usage.output_tokens"), Some(3));
        assert_eq!(ok.int_attr("http.response.status_code"), Some(200));
        assert!(ok.attr("error.type").is_none());
        match ok.attr("gen_ai.response.finish_reasons") {
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::ArrayValue(a)) => {
                assert_eq!(a.values.len(), 1);
            }
            other => panic!("finish reasons: {other:?}"),
        }
    }
    let failed = &spans[2];
    assert_eq!(failed.str_attr("error.type"), Some("500"));
    assert_eq!(failed.int_attr("http.response.status_code"), Some(500));
    assert_eq!(
        failed.span.status.as_ref().map(|s| s.code),
        Some(2),
        "STATUS_CODE_ERROR"
    );
    s.assert_metric(r#"llm_sidecar_otlp_spans_total{result="exported"}"#, 4.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_requests_nothing_and_is_counted() {
    // a port that refuses connections
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/v1/traces", closed.local_addr().unwrap());
    drop(closed);
    let m = default_mock().await;
    let s = TestSidecar::start(&otlp_config(&m.url(), &endpoint)).await;
    for _ in 0..30 {
        let r = s.chat("/openai/v1/chat/completions", false).await;
        assert_eq!(r.status(), 200);
    }
    s.wait_metric(
        "llm_sidecar_otlp_spans_total{result=\"failed\"}",
        ">= 1.0",
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(
        s.metric("llm_sidecar_otlp_spans_total{result=\"exported\"}")
            .await,
        0.0
    );
    let report = s.shutdown().await;
    assert!(report.drained);
}

/// Every metric the shipped Grafana dashboard queries is one the sidecar exports, seen on
/// a sidecar that used every feature the dashboard shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_exists() {
    use crate::support::otlp::OtlpReceiver;
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/helm/llm-sidecar/dashboards/llm-sidecar.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 25, "{}", exprs.len());

    let rx = OtlpReceiver::start().await;
    let (secure, trust, _ca) = crate::tls::tls_mock(
        &["127.0.0.1"],
        &[b"h2"],
        MockOptions {
            fail_every: Some(3),
            chunks: 3,
            ..Default::default()
        },
    )
    .await;
    let backup = default_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let s = TestSidecar::start(&format!(
        r#"tenant: {{ id: team-a }}
audit: {{ output: file, path: {audit} }}
telemetry: {{ otlp_endpoint: "{otlp}", delay: 50ms }}
limits:
  rules:
    - {{ name: tiny, scope: [route], match: {{ routes: [tiny] }}, requests: {{ rate: 1/m, burst: 1 }} }}
providers:
  secure:
    kind: openai
    base_url: {secure}/v1
    auth: {{ type: bearer, token: sk-dash }}
    tls: {{ {trust} }}
  dead:
    kind: openai
    base_url: http://127.0.0.1:1/v1
    auth: {{ type: bearer, token: sk-dash }}
  backup:
    kind: openai
    base_url: {backup}/v1
    auth: {{ type: bearer, token: sk-dash }}
routes:
  - {{ name: main, match: {{ path_prefix: /openai/v1 }}, provider: secure }}
  - name: dead
    match: {{ path_prefix: /dead/v1 }}
    provider: dead
    fallback: [ {{ provider: backup }} ]
  - {{ name: tiny, match: {{ path_prefix: /tiny/v1 }}, provider: backup }}
"#,
        audit = dir.path().join("audit.jsonl").display(),
        otlp = rx.endpoint(),
        secure = secure.url(),
        backup = backup.url(),
    ))
    .await;
    // plain, streamed (TTFT, per-token time), a 500 that is retried, a fallback, a
    // limit refusal
    assert_eq!(
        s.chat("/openai/v1/chat/completions", false).await.status(),
        200
    );
    let (_, done) = read_stream(s.stream_with_usage("/openai/v1/chat/completions").await).await;
    assert!(done);
    assert_eq!(
        s.chat("/openai/v1/chat/completions", false).await.status(),
        200
    );
    assert_eq!(
        s.chat("/openai/v1/chat/completions", false).await.status(),
        200
    );
    assert_eq!(
        s.chat("/dead/v1/chat/completions", false).await.status(),
        200
    );
    assert_eq!(
        s.chat("/tiny/v1/chat/completions", false).await.status(),
        200
    );
    assert_eq!(
        s.chat("/tiny/v1/chat/completions", false).await.status(),
        429
    );
    eventually("spans exported", Duration::from_secs(10), || async {
        !rx.spans().is_empty()
    })
    .await;

    let metrics = s.metrics().await;
    let series: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut missing = Vec::new();
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let is_metric = ["llm_sidecar_", "gen_ai_client_", "process_"]
                .iter()
                .any(|p| word.starts_with(p));
            if is_metric && !series.contains(word) {
                missing.push(word.to_string());
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics lacks: {missing:?}"
    );
}

/// The metrics' model label bound (`other` past 200 names) is for metrics only: the
/// audit log and the spans keep saying which model was called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_label_bound_audit_and_spans_keep_the_real_model() {
    use crate::support::otlp::OtlpReceiver;
    use llm_sidecar::observability::genai::{MAX_MODELS, MAX_MODEL_NAME};
    let rx = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = mock(MockOptions {
        chunks: 1,
        ..Default::default()
    })
    .await;
    let audit = dir.path().join("audit.jsonl");
    let yaml = format!(
        "audit: {{ output: file, path: {} }}\n{}",
        audit.display(),
        otlp_config(&m.url(), &rx.endpoint())
    );
    let s = TestSidecar::start(&yaml).await;
    let url = s.url("/openai/v1/chat/completions");
    let post = |model: String| {
        let mut b = chat_body(false);
        b["model"] = model.into();
        s.client.post(&url).json(&b).send()
    };
    for i in 0..MAX_MODELS {
        assert_eq!(post(format!("made-up-{i}")).await.unwrap().status(), 200);
    }
    let long = format!("long-{}", "x".repeat(400));
    for model in ["the-real-model", long.as_str()] {
        assert_eq!(post(model.to_string()).await.unwrap().status(), 200);
    }
    let sent = MAX_MODELS + 2;
    s.assert_metric("llm_sidecar_audit_records_total", sent as f64)
        .await;
    // metrics: past the bound, a new name is `other`
    let text = s.metrics().await;
    assert!(
        text.contains(r#"gen_ai_request_model="other""#),
        "the label bound holds"
    );
    assert!(!text.contains("the-real-model"));

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let real = lines
        .iter()
        .find(|l| l["model"] == "the-real-model")
        .expect("the audit record names the real model");
    assert_eq!(real["response_model"], "the-real-model");
    let capped = &long[..MAX_MODEL_NAME];
    let cut = lines
        .iter()
        .find(|l| l["model"].as_str().is_some_and(|m| m.starts_with("long-")))
        .expect("the long name's record");
    assert_eq!(cut["model"], capped, "cut to {MAX_MODEL_NAME} bytes");
    assert_eq!(cut["response_model"], capped);
    assert!(lines.iter().all(|l| l["model"] != "other"));

    eventually("every span exported", Duration::from_secs(20), || async {
        rx.spans().len() >= sent
    })
    .await;
    let spans = rx.spans();
    let span = spans
        .iter()
        .find(|sp| sp.str_attr("gen_ai.request.model") == Some("the-real-model"))
        .expect("the span names the real model");
    assert_eq!(
        span.str_attr("gen_ai.response.model"),
        Some("the-real-model")
    );
    assert!(spans
        .iter()
        .any(|sp| sp.str_attr("gen_ai.request.model") == Some(capped)));
    assert!(spans
        .iter()
        .all(|sp| sp.str_attr("gen_ai.request.model") != Some("other")));
}

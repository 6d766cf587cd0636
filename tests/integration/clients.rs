//! Real clients against the real sidecar: curl, and the official OpenAI and Anthropic
//! Python SDKs with `base_url`.

use crate::support::*;
use llm_sidecar::mock::MockOptions;
use std::process::Command;
use std::time::Duration;

fn config(mock: &str) -> String {
    format!(
        r#"providers:
  openai:
    kind: openai
    base_url: {mock}/v1
    auth: {{ type: bearer, token: sk-provider }}
  anthropic:
    kind: anthropic
    base_url: {mock}
    auth: {{ type: header, name: x-api-key, value: sk-provider }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: openai
  - match: {{ path_prefix: /anthropic }}
    provider: anthropic
"#
    )
}

/// Runs a client script with the sidecar's base URL, outside any proxy.
async fn python(script: &'static str, base: String) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(base)
            .env("NO_PROXY", "*")
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .output()
    })
    .await
    .unwrap()
    .expect("python3 is needed (scripts/setup.sh --test installs it)")
}

async fn start() -> (llm_sidecar::mock::MockServer, TestSidecar) {
    // The mock only accepts the provider key: every success proves injection.
    let m = mock(MockOptions {
        require_key: Some("sk-provider".into()),
        interval: Duration::from_millis(2),
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&config(&m.url())).await;
    (m, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdks_work_through_base_url() {
    let (m, s) = start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/clients/sdk_check.py"
    );
    let out = python(script, format!("http://{}", s.sidecar().reverse_addr())).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "install the SDKs first: pip install -r tests/integration/clients/requirements.txt\n{stderr}"
    );
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SDK-OK"));
    assert!(m
        .recorded()
        .iter()
        .all(|r| r.header("x-api-key").is_none_or(|k| k == "sk-provider")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_json_and_streaming() {
    let (_m, s) = start().await;
    let url = s.url("/openai/v1/chat/completions");
    let out = tokio::task::spawn_blocking(move || {
        let json = Command::new("curl")
            .args(["-sS", "--noproxy", "*", "--max-time", "10", "-H", "content-type: application/json", "-H", "authorization: Bearer app-key"])
            .args(["-d", r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#])
            .arg(&url)
            .output()
            .unwrap();
        let sse = Command::new("curl")
            .args(["-sSN", "--noproxy", "*", "--max-time", "10", "-H", "content-type: application/json"])
            .args(["-d", r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#])
            .arg(&url)
            .output()
            .unwrap();
        (json, sse)
    })
    .await
    .unwrap();
    let (json, sse) = out;
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["object"], "chat.completion");
    let text = String::from_utf8_lossy(&sse.stdout);
    assert!(text.contains("chat.completion.chunk"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

/// The OpenAI SDK against an Anthropic target and the Anthropic SDK against an OpenAI
/// target (plain, streamed, parallel tool calls, images), and a fallback across formats;
/// the mock refuses any request that breaks its API's documented schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_through_translating_routes() {
    let m = mock(MockOptions {
        require_key: Some("sk-provider".into()),
        interval: Duration::from_millis(2),
        record: 200,
        ..Default::default()
    })
    .await;
    let mock = m.url();
    let conf = format!(
        r#"providers:
  openai:
    kind: openai
    base_url: {mock}/v1
    auth: {{ type: bearer, token: sk-provider }}
  anthropic:
    kind: anthropic
    base_url: {mock}
    auth: {{ type: header, name: x-api-key, value: sk-provider }}
  dead-anthropic:
    kind: anthropic
    base_url: http://127.0.0.1:9
    auth: {{ type: header, name: x-api-key, value: sk-provider }}
routes:
  - match: {{ path_prefix: /claude }}
    api: openai
    provider: anthropic
    model: claude-sonnet-4-5
  - match: {{ path_prefix: /gpt }}
    api: anthropic
    provider: openai
    model: gpt-4o-mini
  - name: chain
    match: {{ path_prefix: /chain }}
    api: openai
    provider: dead-anthropic
    model: claude-sonnet-4-5
    retry: {{ max_attempts: 1 }}
    fallback:
      - {{ provider: openai, model: mock-fallback }}
"#
    );
    let s = TestSidecar::start(&conf).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/clients/translate_check.py"
    );
    let out = python(script, format!("http://{}", s.sidecar().reverse_addr())).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("TRANSLATE-OK"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    // What the providers received: each in its own API, at its own path, with the
    // route's model, never the client's format.
    let rec = m.recorded();
    let to_anthropic: Vec<_> = rec.iter().filter(|r| r.path == "/v1/messages").collect();
    let to_openai: Vec<_> = rec
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .collect();
    assert!(
        to_anthropic.len() >= 6,
        "{} Anthropic requests",
        to_anthropic.len()
    );
    assert!(to_openai.len() >= 6, "{} OpenAI requests", to_openai.len());
    for r in &to_anthropic {
        let b: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(b["model"], "claude-sonnet-4-5");
        assert!(b.get("max_tokens").is_some());
        assert_eq!(r.header("accept-encoding"), Some("identity"));
        assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
        assert!(
            r.header("authorization").is_none(),
            "the client's bearer never reaches Anthropic"
        );
    }
    for r in &to_openai {
        let b: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            b["model"] == "gpt-4o-mini" || b["model"] == "mock-fallback",
            "{b}"
        );
        assert!(b.get("system").is_none() && b.get("stop_sequences").is_none());
    }
}

/// The OpenAI and Anthropic SDKs against Bedrock Converse and Gemini targets (plain,
/// streamed, parallel tool calls and their results going back, images), and a fallback
/// that crosses three formats: a failing Anthropic target, Bedrock (event-stream), an
/// OpenAI one. The mocks refuse what breaks their API's rules; Bedrock's requests are
/// signed over the translated bytes, as botocore computes the signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_through_bedrock_and_gemini_targets_and_a_three_format_fallback() {
    capture_logs();
    let pid = std::process::id();
    let (ak, sk, token) = (
        format!("AKIATRANSLATE{pid}"),
        format!("sigv4-translate-canary-{pid}"),
        format!("session-translate-canary-{pid}"),
    );
    let vertex_token = format!("ya29.vertex-canary-{pid}");
    let fast = || MockOptions {
        interval: Duration::from_millis(2),
        record: 300,
        ..Default::default()
    };
    let aws = mock(fast()).await;
    let gcp = mock(MockOptions {
        require_key: Some(vertex_token.clone()),
        ..fast()
    })
    .await;
    let oai = mock(MockOptions {
        require_key: Some("sk-provider".into()),
        ..fast()
    })
    .await;
    let down = mock(MockOptions {
        fail_every: Some(1),
        fail_status: 503,
        ..fast()
    })
    .await;
    let model = "anthropic.claude-3-5-sonnet-20240620-v1:0";
    let sigv4 = format!(
        r#"{{ type: aws_sigv4, region: us-west-2, credentials: {{ from: static, access_key_id: "{ak}", secret_access_key: "{sk}", session_token: "{token}" }} }}"#
    );
    let conf = format!(
        r#"providers:
  bedrock:
    kind: bedrock
    base_url: {aws}
    auth: {sigv4}
  bedrock-down:
    kind: bedrock
    base_url: {down}
    auth: {sigv4}
  vertex:
    kind: vertex_ai
    base_url: {gcp}/v1/projects/p/locations/us-central1
    auth: {{ type: bearer, token: "{vertex_token}" }}
  openai:
    kind: openai
    base_url: {oai}/v1
    auth: {{ type: bearer, token: sk-provider }}
  anthropic-down:
    kind: anthropic
    base_url: {down}
    auth: {{ type: header, name: x-api-key, value: sk-provider }}
routes:
  - {{ name: bedrock, match: {{ path_prefix: /bedrock/ }}, api: openai, provider: bedrock, model: "{model}" }}
  - {{ name: gemini, match: {{ path_prefix: /gemini/ }}, api: openai, provider: vertex, model: gemini-2.5-flash }}
  - {{ name: bedrock-msgs, match: {{ path_prefix: /bedrock-msgs }}, api: anthropic, provider: bedrock, model: "{model}" }}
  - {{ name: gemini-msgs, match: {{ path_prefix: /gemini-msgs }}, api: anthropic, provider: vertex, model: gemini-2.5-flash }}
  - {{ name: gemini-usage, match: {{ path_prefix: /gemini-usage }}, api: openai, provider: vertex, model: gemini-2.5-flash }}
  - name: chain
    match: {{ path_prefix: /chain/ }}
    api: openai
    provider: anthropic-down
    model: claude-sonnet-4-5
    retry: {{ max_attempts: 1 }}
    fallback:
      - {{ provider: bedrock, model: "{model}" }}
      - {{ provider: openai, model: mock-fallback }}
  - name: chain2
    match: {{ path_prefix: /chain2/ }}
    api: openai
    provider: anthropic-down
    model: claude-sonnet-4-5
    retry: {{ max_attempts: 1 }}
    fallback:
      - {{ provider: bedrock-down, model: "{model}" }}
      - {{ provider: openai, model: mock-fallback }}
"#,
        aws = aws.url(),
        down = down.url(),
        gcp = gcp.url(),
        oai = oai.url(),
    );
    let s = TestSidecar::start(&conf).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/clients/translate_cloud_check.py"
    );
    let out = python(script, format!("http://{}", s.sidecar().reverse_addr())).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("CLOUD-OK"),
        "stdout: {stdout}\nstderr: {stderr}"
    );

    // Bedrock got Converse at the model's own path, signed over the bytes it received.
    let rec = aws.recorded();
    // 9 from the OpenAI SDK (its URL image is refused before sending), 4 from the
    // Anthropic SDK, 2 from the first chain.
    assert_eq!(rec.len(), 15, "Bedrock requests");
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (i, r) in rec.iter().enumerate() {
        assert!(
            r.path == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
                || r.path == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream",
            "{}",
            r.path
        );
        let b: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            b.get("model").is_none() && b.get("messages").is_some(),
            "{b}"
        );
        assert!(r.header("x-api-key").is_none());
        cases.push(crate::auth::botocore_case(r, (&ak, &sk, &token), dir.path(), i).0);
    }
    let expected = crate::auth::python("sigv4_check.py", &serde_json::Value::Array(cases));
    for (r, want) in rec.iter().zip(expected.as_array().unwrap()) {
        assert_eq!(r.header("authorization"), want.as_str(), "{}", r.path);
    }
    // Gemini at the model's method, streams with alt=sse, the route's credential only.
    let rec = gcp.recorded();
    // 10 from the OpenAI SDK, its temperature check, 4 from the Anthropic SDK.
    assert_eq!(rec.len(), 15, "Gemini requests");
    let prefix = "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash:";
    assert!(rec
        .iter()
        .all(|r| r.path == format!("{prefix}generateContent")
            || r.path == format!("{prefix}streamGenerateContent?alt=sse")));
    assert!(rec.iter().any(|r| r.path.ends_with("alt=sse")));
    let bearer = format!("Bearer {vertex_token}");
    assert!(rec
        .iter()
        .all(|r| r.header("authorization") == Some(bearer.as_str())));
    // The chains: the failing targets were tried first, the answer came from one.
    assert!(down.request_count() >= 6, "{}", down.request_count());
    assert!(!oai.recorded().is_empty());

    // Token budgets and metrics read the target's own usage (Gemini's usageMetadata).
    let r = s
        .client
        .post(s.url("/gemini-usage/v1/chat/completions"))
        .json(&serde_json::json!({"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": "count me"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let prompt = v["usage"]["prompt_tokens"].as_f64().unwrap();
    assert!(prompt > 0.0);
    s.assert_metric(
        r#"llm_sidecar_tokens_total{provider="vertex",route="gemini-usage",type="output"}"#,
        5.0,
    )
    .await;
    s.assert_metric(
        r#"llm_sidecar_tokens_total{provider="vertex",route="gemini-usage",type="input"}"#,
        prompt,
    )
    .await;
    assert_no_leak(&s, &[&sk, &token, &vertex_token]).await;
}

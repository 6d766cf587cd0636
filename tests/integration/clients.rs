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

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
    let base = format!("http://{}", s.sidecar().reverse_addr());
    let out = tokio::task::spawn_blocking(move || {
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
    .expect("python3 is needed (scripts/setup.sh --test installs it)");
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

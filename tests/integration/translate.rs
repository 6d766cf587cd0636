//! Translating routes beyond the SDK checks in `clients.rs`: model maps per target and
//! the model list, per-target timeouts, the translation metric and the audit record.

use crate::support::*;
use llm_sidecar::mock::MockOptions;
use serde_json::{json, Value};
use std::time::Duration;

fn chat(model: &str) -> Value {
    json!({"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_maps_per_target_the_model_list_the_metric_and_the_audit_record() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let fast = || MockOptions {
        interval: Duration::from_millis(1),
        record: 50,
        ..Default::default()
    };
    let claude = mock(fast()).await;
    let down = mock(MockOptions {
        fail_every: Some(1),
        fail_status: 503,
        ..fast()
    })
    .await;
    let gpt = mock(fast()).await;
    let conf = format!(
        r#"audit: {{ output: file, path: "{audit}" }}
providers:
  claude: {{ kind: anthropic, base_url: "{claude}" }}
  claude-down: {{ kind: anthropic, base_url: "{down}" }}
  gpt: {{ kind: openai, base_url: "{gpt}/v1" }}
routes:
  - name: mapped
    match: {{ path_prefix: /mapped }}
    api: openai
    provider: claude
    models: {{ gpt-4o: claude-sonnet-4-5, gpt-4o-mini: claude-haiku-4-5 }}
  - name: chain
    match: {{ path_prefix: /chain }}
    api: openai
    provider: claude-down
    models: {{ gpt-4o: claude-sonnet-4-5 }}
    retry: {{ max_attempts: 1 }}
    fallback:
      - {{ provider: gpt, models: {{ gpt-4o: gpt-4o-2024-08-06, o3: o3-2025-04-16 }} }}
  - name: msgs
    match: {{ path_prefix: /msgs }}
    api: anthropic
    provider: gpt
    model: gpt-4.1
  - name: unnamed
    match: {{ path_prefix: /unnamed }}
    api: openai
    provider: claude
"#,
        audit = audit.display(),
        claude = claude.url(),
        down = down.url(),
        gpt = gpt.url(),
    );
    let s = TestSidecar::start(&conf).await;
    let post = |path: &str, body: Value| s.client.post(s.url(path)).json(&body).send();

    // The map: a listed name becomes the target's, another is sent as written.
    let r = post("/mapped/v1/chat/completions", chat("gpt-4o-mini"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post("/mapped/v1/chat/completions", chat("claude-opus-4"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent: Vec<String> = claude
        .recorded()
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["model"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(sent, ["claude-haiku-4-5", "claude-opus-4"]);

    // Each target maps with its own map: the fallback gets its own name for gpt-4o.
    let r = post("/chain/v1/chat/completions", chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tried: Value = serde_json::from_slice(&down.recorded()[0].body).unwrap();
    assert_eq!(tried["model"], "claude-sonnet-4-5");
    let answered: Value = serde_json::from_slice(&gpt.recorded()[0].body).unwrap();
    assert_eq!(answered["model"], "gpt-4o-2024-08-06");

    // GET …/models lists what the targets serve, in the clients' API.
    let r = s
        .client
        .get(s.url("/chain/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<(&str, &str)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["owned_by"].as_str().unwrap()))
        .collect();
    assert_eq!(ids, [("gpt-4o", "claude-down"), ("o3", "gpt")]);
    let v: Value = s
        .client
        .get(s.url("/msgs/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["data"][0]["id"], "gpt-4.1");
    assert_eq!(v["has_more"], false);
    // A route whose targets name no model has no list of its own.
    let r = s
        .client
        .get(s.url("/unnamed/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(gpt.recorded().len(), 1, "the lists were the sidecar's own");

    // The metric, by route and both APIs.
    let r = post(
        "/mapped/v1/chat/completions",
        json!({"model": "gpt-4o", "temperature": 1.7, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let m = |route: &str, up: &str, result: &str| {
        format!(
            r#"llm_sidecar_translations_total{{api="openai_chat",result="{result}",route="{route}",upstream_api="{up}"}}"#
        )
    };
    s.assert_metric(&m("mapped", "anthropic_messages", "translated"), 2.0)
        .await;
    s.assert_metric(
        &m("mapped", "anthropic_messages", "untranslatable_request"),
        1.0,
    )
    .await;
    s.assert_metric(&m("chain", "anthropic_messages", "translated"), 1.0)
        .await;
    s.shutdown().await;

    // The audit record names both models and both APIs.
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = &lines[0];
    assert_eq!(first["model"], "gpt-4o-mini");
    assert_eq!(first["upstream_model"], "claude-haiku-4-5");
    assert_eq!(first["api"], "openai_chat");
    assert_eq!(first["upstream_api"], "anthropic_messages");
    let chained = lines.iter().find(|l| l["route"] == "chain").unwrap();
    assert_eq!(chained["upstream_model"], "gpt-4o-2024-08-06");
    assert!(
        chained.get("upstream_api").is_none(),
        "the OpenAI fallback was not translated: {chained}"
    );
}

/// A target's own timeouts replace its provider's: the route's provider is cut at its
/// route's `first_byte` and the fallback answers; a fallback with a short `first_byte`
/// is cut where its provider's own (300 s) would have waited for the slow answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_target_has_its_own_timeouts() {
    let slow = mock(MockOptions {
        latency: Duration::from_secs(3),
        record: 10,
        ..Default::default()
    })
    .await;
    let fast = mock(MockOptions {
        interval: Duration::from_millis(1),
        ..Default::default()
    })
    .await;
    let down = mock(MockOptions {
        fail_every: Some(1),
        fail_status: 503,
        ..Default::default()
    })
    .await;
    let conf = format!(
        r#"providers:
  slow: {{ kind: anthropic, base_url: "{slow}" }}
  fast: {{ kind: openai, base_url: "{fast}/v1" }}
  down: {{ kind: openai, base_url: "{down}/v1" }}
routes:
  - name: cut-first
    match: {{ path_prefix: /cut-first }}
    api: openai
    provider: slow
    model: claude-x
    timeouts: {{ first_byte: 300ms }}
    retry: {{ max_attempts: 1 }}
    fallback: [{{ provider: fast }}]
  - name: cut-fallback
    match: {{ path_prefix: /cut-fallback }}
    api: openai
    provider: down
    retry: {{ max_attempts: 1 }}
    fallback: [{{ provider: slow, model: claude-x, timeouts: {{ first_byte: 300ms }} }}]
"#,
        slow = slow.url(),
        fast = fast.url(),
        down = down.url(),
    );
    let s = TestSidecar::start(&conf).await;
    let r = s
        .client
        .post(s.url("/cut-first/v1/chat/completions"))
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    let r = s
        .client
        .post(s.url("/cut-fallback/v1/chat/completions"))
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.headers()["x-llm-sidecar-error"],
        "upstream_timeout_first_byte"
    );
    assert_eq!(
        slow.recorded().len(),
        2,
        "both routes reached the slow provider"
    );
}

/// `POST …/responses` on a route whose clients speak OpenAI: to OpenAI itself it goes
/// as it is (OpenAI has the Responses API); to an OpenAI-compatible provider without it,
/// it is told as Chat Completions and the answer comes back as a Response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_requests_go_natively_to_openai_and_as_chat_elsewhere() {
    let m = mock(MockOptions {
        interval: Duration::from_millis(1),
        record: 10,
        ..Default::default()
    })
    .await;
    let conf = format!(
        r#"providers:
  openai: {{ kind: openai, base_url: "{url}/v1" }}
  deepseek: {{ kind: deepseek, base_url: "{url}/v1" }}
routes:
  - {{ name: native, match: {{ path_prefix: /native }}, api: openai, provider: openai, model: gpt-4.1 }}
  - {{ name: compat, match: {{ path_prefix: /compat }}, api: openai, provider: deepseek, model: deepseek-chat }}
"#,
        url = m.url()
    );
    let s = TestSidecar::start(&conf).await;
    let body = json!({"model": "gpt-4o", "input": "hi", "max_output_tokens": 3, "store": true});
    // The mock has no Responses API: its 404 is the provider's own answer, passed on.
    let r = s
        .client
        .post(s.url("/native/v1/responses"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let rec = m.recorded();
    assert_eq!(rec[0].path, "/v1/responses");
    let sent: Value = serde_json::from_slice(&rec[0].body).unwrap();
    assert_eq!(sent["input"], "hi", "untranslated");
    assert_eq!(sent["model"], "gpt-4.1", "with the route's model");

    let r = s
        .client
        .post(s.url("/compat/v1/responses"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["model"], "deepseek-chat");
    assert!(v["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("This"));
    let rec = m.recorded();
    assert_eq!(rec[1].path, "/v1/chat/completions");
    let sent: Value = serde_json::from_slice(&rec[1].body).unwrap();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "user", "content": "hi"})
    );
    assert_eq!(sent["max_completion_tokens"], 3);
    s.assert_metric(
        r#"llm_sidecar_translations_total{api="openai_responses",result="translated",route="compat",upstream_api="openai_chat"}"#,
        1.0,
    )
    .await;
}

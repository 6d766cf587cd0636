//! A canary secret must never appear in `/config`, `/metrics`, error responses or any log
//! line, at any log level, while it is in use.

use crate::support::*;
use llm_sidecar::config::ReloadOutcome;
use llm_sidecar::mock::MockOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_secret_never_leaks() {
    // The sidecar's own log setup at its most verbose: everything, from every crate
    // (Pingora's `log` output included), at TRACE.
    let logs = capture_logs();

    let canary = format!("sk-canary-{}", std::process::id());
    let header_canary = format!("org-canary-{}", std::process::id());
    let m = mock(MockOptions {
        require_key: Some(canary.clone()),
        ..Default::default()
    })
    .await;
    let ca = TestCa::new("canary CA");
    let h2 = mock(MockOptions {
        require_key: Some(canary.clone()),
        tls: Some(ca.server_config(&["127.0.0.1"], &[b"h2"])),
        ..Default::default()
    })
    .await;
    let secrets = tempfile::tempdir().unwrap();
    let key = secrets.path().join("key");
    std::fs::write(&key, format!("{canary}\n")).unwrap();
    let yaml = format!(
        r#"providers:
  mock:
    kind: openai
    base_url: {url}/v1
    auth: {{ type: bearer, token: "${{file:{key}}}" }}
    headers: {{ openai-organization: "{header_canary}" }}
  secure:
    kind: openai
    base_url: {h2url}/v1
    auth: {{ type: bearer, token: "${{file:{key}}}" }}
    tls: {{ ca_file: {ca_file} }}
  wrongkey:
    kind: openai
    base_url: {url}/v1
    auth: {{ type: header, name: api-key, value: "{canary}-but-wrong" }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: mock
  - match: {{ path_prefix: /h2/v1 }}
    provider: secure
  - match: {{ path_prefix: /wrong/v1 }}
    provider: wrongkey
"#,
        url = m.url(),
        h2url = h2.url(),
        key = key.display(),
        ca_file = ca.write_pem(secrets.path()).display()
    );
    let s = TestSidecar::start(&yaml).await;

    let mut seen = Vec::new();
    // Success, streaming, an upstream 401, a sidecar 404, a client sending its own key.
    for (path, stream) in [
        ("/openai/v1/chat/completions", false),
        ("/openai/v1/chat/completions", true),
        ("/h2/v1/chat/completions", true),
        ("/wrong/v1/chat/completions", false),
        ("/nowhere", false),
    ] {
        let r = s
            .client
            .post(s.url(path))
            .header("authorization", "Bearer client-side-key")
            .json(&chat_body(stream))
            .send()
            .await
            .unwrap();
        let headers = format!("{:?}", r.headers());
        seen.push(format!(
            "{path} {} {headers} {}",
            r.status(),
            r.text().await.unwrap()
        ));
    }
    assert!(
        seen[0].starts_with("/openai/v1/chat/completions 200"),
        "{}",
        seen[0]
    );
    assert!(
        seen[2].starts_with("/h2/v1/chat/completions 200"),
        "{}",
        seen[2]
    );
    assert_eq!(h2.recorded()[0].version, http::Version::HTTP_2);
    assert!(seen[3].contains(" 401 "), "{}", seen[3]);
    // The canary was really used on the wire.
    assert_eq!(
        m.recorded()[0].header("authorization"),
        Some(format!("Bearer {canary}").as_str())
    );
    assert_eq!(
        m.recorded()[0].header("openai-organization"),
        Some(header_canary.as_str())
    );

    // A reload that fails, then one that succeeds.
    std::fs::write(
        &s.config_path,
        "version: 1\nproviders: { broken: {kind: openai, base_url: \"nope\"} }\n",
    )
    .unwrap();
    assert!(matches!(s.reload().await, ReloadOutcome::Rejected(_)));
    std::fs::write(
        &s.config_path,
        with_listeners(
            &yaml
                .replace("wrongkey:", "wrongkey2:")
                .replace("provider: wrongkey", "provider: wrongkey2"),
        ),
    )
    .unwrap();
    assert!(matches!(s.reload().await, ReloadOutcome::Applied { .. }));

    let config = s.get_text(&s.admin("/config")).await;
    let metrics = s.metrics().await;
    assert!(config.contains("[redacted]"));
    s.shutdown().await;

    let log_text = logs.text();
    assert!(
        log_text.contains("llm-sidecar listening"),
        "the capture works"
    );
    assert!(
        log_text.contains("config reload rejected"),
        "the capture has the reload"
    );
    assert!(
        log_text.lines().count() > 50,
        "TRACE logging produced output"
    );
    assert!(
        log_text.contains("\"level\":\"TRACE\""),
        "logging really ran at TRACE (is RUST_LOG set?)"
    );
    for (name, text) in [
        ("/config", &config),
        ("/metrics", &metrics),
        ("logs", &log_text),
        ("responses", &seen.join("\n")),
    ] {
        for secret in [&canary, &header_canary] {
            let leaks: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(secret.as_str()))
                .take(5)
                .collect();
            assert!(
                leaks.is_empty(),
                "{name} leaks a secret in:\n{}",
                leaks.join("\n")
            );
        }
    }
}

//! Signatures and credentials, checked against independent references: Python's
//! standard library for HMAC, botocore for SigV4, a token server that counts calls and
//! verifies JWTs for OAuth2. Every test ends by grepping logs, metrics and `/config` for
//! its secrets.

use crate::support::token_server;
use crate::support::upstreams::by_credential;
use crate::support::*;
use llm_sidecar::mock::MockOptions;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Runs a checker script with JSON on stdin and parses its JSON answer.
pub(crate) fn python(script: &str, input: &Value) -> Value {
    use std::io::Write;
    let path = format!(
        "{}/tests/integration/clients/{script}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut child = Command::new("python3")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed (scripts/setup.sh --test)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed (scripts/setup.sh --test installs its packages):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(crate) fn body_file(dir: &std::path::Path, i: usize, body: &[u8]) -> String {
    let p = dir.join(format!("body-{i}"));
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_signatures_match_python_hmac() {
    capture_logs();
    let secret = format!("hmac-canary-{}", std::process::id());
    let m = default_mock().await;
    let yaml = format!(
        r#"providers:
  gw:
    kind: openai_compatible
    base_url: {url}/v1
    auth: {{ type: hmac, key_id: app-7, secret: "{secret}" }}
routes:
  - match: {{ path_prefix: /gw/v1 }}
    provider: gw
"#,
        url = m.url()
    );
    let s = TestSidecar::start(&yaml).await;
    let one_mib: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("GET", "/gw/v1/models?limit=5&order=desc", vec![]),
        (
            "POST",
            "/gw/v1/chat/completions",
            serde_json::to_vec(&chat_body(false)).unwrap(),
        ),
        ("POST", "/gw/v1/chat/completions", vec![]),
        ("POST", "/gw/v1/embeddings", one_mib),
    ];
    for (method, path, body) in &cases {
        let r = s
            .client
            .request(method.parse().unwrap(), s.url(path))
            .header("x-signature", "forged")
            .header("x-key-id", "forged")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success() || r.status() == 400,
            "{path}: {}",
            r.status()
        );
    }
    let rec = m.recorded();
    assert_eq!(rec.len(), cases.len());
    let dir = tempfile::tempdir().unwrap();
    let mut input = Vec::new();
    for (i, r) in rec.iter().enumerate() {
        assert_eq!(r.header("x-key-id"), Some("app-7"));
        let nonce = r.header("x-nonce").unwrap();
        assert_eq!(nonce.len(), 16);
        assert!(
            nonce
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{nonce}"
        );
        let ts: u128 = r.header("x-timestamp").unwrap().parse().unwrap();
        assert!(
            ts >= before && ts < before + 60_000,
            "epoch milliseconds: {ts}"
        );
        assert_eq!(r.body, cases[i].2, "the signed body is the body sent");
        input.push(json!({
            "secret": secret, "method": r.method.as_str(), "path": r.path,
            "timestamp": r.header("x-timestamp").unwrap(), "nonce": nonce,
            "body_file": body_file(dir.path(), i, &r.body),
        }));
    }
    let nonces: std::collections::BTreeSet<&str> =
        rec.iter().map(|r| r.header("x-nonce").unwrap()).collect();
    assert_eq!(nonces.len(), rec.len(), "a fresh nonce per request");
    let expected = python("hmac_check.py", &Value::Array(input));
    for (r, want) in rec.iter().zip(expected.as_array().unwrap()) {
        assert_eq!(
            r.header("x-signature"),
            want.as_str(),
            "{} {}",
            r.method,
            r.path
        );
        assert_eq!(
            r.headers.get_all("x-signature").iter().count(),
            1,
            "the forged one is gone"
        );
    }
    assert_eq!(
        rec[0].path, "/v1/models?limit=5&order=desc",
        "the query is part of the signed path"
    );
    assert_no_leak(&s, &[&secret]).await;
}

/// A Bedrock provider signed with static SigV4 credentials, routed at `/bedrock`;
/// `route_extra` is added to the route.
fn bedrock_yaml(url: &str, (ak, sk, token): (&str, &str, &str), route_extra: &str) -> String {
    format!(
        r#"providers:
  bedrock:
    kind: bedrock
    base_url: {url}
    auth:
      type: aws_sigv4
      region: us-west-2
      credentials: {{ from: static, access_key_id: "{ak}", secret_access_key: "{sk}", session_token: "{token}" }}
routes:
  - match: {{ path_prefix: /bedrock }}
    provider: bedrock
{route_extra}"#
    )
}

/// One request as the provider received it, for `sigv4_check.py`, and the headers its
/// signature says it signed. botocore gets every header the provider received, not the
/// sidecar's own list: it signs all of them, so a header the sidecar sent but left out of
/// its signature fails the comparison.
pub(crate) fn botocore_case(
    r: &llm_sidecar::mock::Recorded,
    (ak, sk, token): (&str, &str, &str),
    dir: &std::path::Path,
    i: usize,
) -> (Value, Vec<String>) {
    // Only these may go unsigned: framing and transport headers, tracing that a proxy
    // may add on the way, and the test's own `x-mock-*` controls (headers AWS does not
    // read, which the sidecar passes through as the client sent them).
    const UNSIGNED_OK: &[&str] = &[
        "content-length",
        "transfer-encoding",
        "connection",
        "accept",
        "accept-encoding",
        "user-agent",
        "traceparent",
        "tracestate",
    ];
    let auth = r.header("authorization").unwrap();
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ak}/")),
        "{auth}"
    );
    assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
    assert_eq!(r.header("x-amz-security-token"), Some(token));
    let amz_date = r.header("x-amz-date").unwrap();
    assert_ne!(
        amz_date, "19990101T000000Z",
        "the client's date is replaced"
    );
    let signed: Vec<String> = auth
        .split("SignedHeaders=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .split(';')
        .map(str::to_string)
        .collect();
    let mut headers = serde_json::Map::new();
    for (name, value) in r.headers.iter() {
        let n = name.as_str();
        if ["authorization", "x-amz-date", "x-amz-security-token"].contains(&n)
            || UNSIGNED_OK.contains(&n)
            || n.starts_with("x-mock-")
        {
            continue;
        }
        headers.insert(n.to_string(), json!(value.to_str().unwrap()));
    }
    for h in &signed {
        assert!(
            h == "host" || h.starts_with("x-amz") || headers.contains_key(h),
            "{h} is signed but was not sent"
        );
    }
    let case = json!({
        "access_key": ak, "secret_key": sk, "session_token": token,
        "region": "us-west-2", "service": "bedrock", "method": r.method.as_str(),
        "url": format!("https://{}{}", r.header("host").unwrap(), r.path),
        "headers": headers, "amz_date": amz_date,
        "body_file": body_file(dir, i, &r.body),
    });
    (case, signed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_headers_match_botocore_for_bedrock_requests() {
    capture_logs();
    let pid = std::process::id();
    let (ak, sk, token) = (
        format!("AKIATEST{pid}"),
        format!("sigv4-secret-canary-{pid}"),
        format!("session-canary-{pid}"),
    );
    let m = mock(MockOptions {
        interval: Duration::from_millis(1),
        ..Default::default()
    })
    .await;
    let yaml = bedrock_yaml(&m.url(), (&ak, &sk, &token), "");
    let s = TestSidecar::start(&yaml).await;
    let model = "anthropic.claude-3-5-sonnet-20240620-v1%3A0";
    let converse = json!({"messages": [{"role": "user", "content": [{"text": "Hello"}]}], "inferenceConfig": {"maxTokens": 5}});
    let invoke_big = serde_json::to_vec(&json!({
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
        "messages": [{"role": "user", "content": "x".repeat(20 << 20)}]
    }))
    .unwrap();
    assert!(invoke_big.len() > 20 << 20);

    // A streaming Converse call: the response comes back in event-stream framing.
    let r = s
        .client
        .post(s.url(&format!("/bedrock/model/{model}/converse-stream")))
        .header("content-type", "application/json")
        .header("x-amzn-bedrock-trace", "ENABLED")
        .header("authorization", "AWS4-HMAC-SHA256 Credential=FORGED")
        .header("x-amz-date", "19990101T000000Z")
        .header("x-amz-security-token", "forged")
        .json(&converse)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let frames = r.bytes().await.unwrap();
    // Read as the AWS SDKs read it, by botocore's event-stream decoder (CRCs, header
    // types), not by the mock's own encoder's rules.
    let dir = tempfile::tempdir().unwrap();
    let events = python(
        "eventstream_check.py",
        &json!({"body_file": body_file(dir.path(), 0, &frames)}),
    );
    let events = events.as_array().unwrap();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["headers"][":event-type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"messageStart"), "{types:?}");
    assert!(types.contains(&"contentBlockDelta"), "{types:?}");
    assert_eq!(&types[types.len() - 2..], ["messageStop", "metadata"]);
    for e in events {
        assert_eq!(e["headers"][":message-type"], "event");
        assert_eq!(e["headers"][":content-type"], "application/json");
    }
    // What the sidecar counted from the stream is what its metadata event says.
    let usage = &events.last().unwrap()["payload"]["usage"];
    for (ty, field) in [("input", "inputTokens"), ("output", "outputTokens")] {
        s.assert_metric(
            &format!(
                r#"llm_sidecar_tokens_total{{provider="bedrock",route="bedrock",type="{ty}"}}"#
            ),
            usage[field].as_f64().unwrap(),
        )
        .await;
    }
    // A 20 MiB InvokeModel.
    let r = s
        .client
        .post(s.url(&format!("/bedrock/model/{model}/invoke")))
        .header("content-type", "application/json")
        .body(invoke_big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A model ARN (an inference profile): `%3A` and `%2F` in the path pass the
    // traversal guard and are signed as sent.
    let arn = "arn%3Aaws%3Abedrock%3Aus-west-2%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-5-sonnet-20240620-v1%3A0";
    let r = s
        .client
        .post(s.url(&format!("/bedrock/model/{arn}/converse")))
        .json(&converse)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let rec = m.recorded();
    assert_eq!(rec.len(), 3);
    assert_eq!(rec[1].body.len(), invoke_big.len());
    assert_eq!(rec[2].path, format!("/model/{arn}/converse"));
    let dir = tempfile::tempdir().unwrap();
    let mut input = Vec::new();
    for (i, r) in rec.iter().enumerate() {
        let (case, signed) = botocore_case(r, (&ak, &sk, &token), dir.path(), i);
        if i == 0 {
            assert!(
                signed.contains(&"x-amzn-bedrock-trace".to_string()),
                "Bedrock options are signed: {signed:?}"
            );
        }
        input.push(case);
    }
    assert_eq!(
        rec[0].path,
        format!("/model/{model}/converse-stream"),
        "the encoded model id is sent as is"
    );
    let expected = python("sigv4_check.py", &Value::Array(input));
    for (r, want) in rec.iter().zip(expected.as_array().unwrap()) {
        assert_eq!(r.header("authorization"), want.as_str(), "{}", r.path);
    }
    assert_no_leak(&s, &[&sk, &token]).await;
}

/// A retried request is signed again for its second attempt: its own `x-amz-date` (the
/// provider's `Retry-After: 1` puts a second between them) and a signature botocore
/// computes for it. A signature kept from the first attempt would carry the old date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_signs_each_attempt_of_a_retried_request_afresh() {
    capture_logs();
    let (ak, sk, token) = ("AKIARETRY", "sigv4-retry-canary", "retry-session-canary");
    // Every 2nd request is a 503: the warm-up is the 1st, the test request's first
    // attempt the 2nd, its retry the 3rd.
    let m = mock(MockOptions {
        fail_every: Some(2),
        fail_status: 503,
        ..Default::default()
    })
    .await;
    let yaml = bedrock_yaml(
        &m.url(),
        (ak, sk, token),
        "    retry: { max_attempts: 2 }\n",
    );
    let s = TestSidecar::start(&yaml).await;
    let converse = json!({"messages": [{"role": "user", "content": [{"text": "Hello"}]}]});
    let send = || {
        s.client
            .post(s.url("/bedrock/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"))
            .header("x-mock-retry-after", "1")
            .json(&converse)
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    let r = send().await.unwrap();
    assert_eq!(r.status(), 200, "retried after the 503");
    let rec = m.recorded();
    assert_eq!(rec.len(), 3);
    let (first, second) = (&rec[1], &rec[2]);
    assert_eq!(first.body, second.body, "the same body, replayed");
    let date = |r: &llm_sidecar::mock::Recorded| r.header("x-amz-date").unwrap().to_string();
    assert!(
        date(second) > date(first),
        "the retry has its own date: {} then {}",
        date(first),
        date(second)
    );
    assert_ne!(
        first.header("authorization"),
        second.header("authorization")
    );
    let dir = tempfile::tempdir().unwrap();
    let input: Vec<Value> = [first, second]
        .iter()
        .enumerate()
        .map(|(i, r)| botocore_case(r, (ak, sk, token), dir.path(), i).0)
        .collect();
    let expected = python("sigv4_check.py", &Value::Array(input));
    for (r, want) in [first, second].iter().zip(expected.as_array().unwrap()) {
        assert_eq!(r.header("authorization"), want.as_str());
    }
    assert_no_leak(&s, &[sk, token]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_credentials_come_from_the_environment_or_a_file_and_reload() {
    capture_logs();
    let m = default_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        "[bedrock]\naws_access_key_id = AKIAFILE1\naws_secret_access_key = file-secret-canary-1\n",
    )
    .unwrap();
    let yaml = format!(
        r#"server: {{ reload_debounce: 50ms }}
providers:
  from-file:
    kind: bedrock
    base_url: {url}
    auth: {{ type: aws_sigv4, region: eu-central-1, credentials: {{ from: file, path: "{p}", profile: bedrock }} }}
  from-env:
    kind: bedrock
    base_url: {url}
    auth: {{ type: aws_sigv4, region: eu-central-1 }}
routes:
  - match: {{ path_prefix: /file }}
    provider: from-file
  - match: {{ path_prefix: /env }}
    provider: from-env
"#,
        url = m.url(),
        p = creds.display()
    );
    let env: llm_sidecar::config::EnvSource = std::sync::Arc::new(|n: &str| match n {
        "AWS_ACCESS_KEY_ID" => Some("AKIAENV".into()),
        "AWS_SECRET_ACCESS_KEY" => Some("env-secret-canary".into()),
        _ => None,
    });
    let s = TestSidecar::start_with_env(&yaml, env).await;
    let key_id = |r: &llm_sidecar::mock::Recorded| {
        r.header("authorization")
            .unwrap()
            .split("Credential=")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    s.chat("/file/model/m/converse", false).await;
    s.chat("/env/model/m/converse", false).await;
    let rec = m.recorded();
    assert_eq!(key_id(&rec[0]), "AKIAFILE1");
    assert_eq!(key_id(&rec[1]), "AKIAENV");
    assert!(rec[1].headers.get("x-amz-security-token").is_none());
    // Rotating the credentials file reloads without a restart.
    std::fs::write(
        &creds,
        "[bedrock]\naws_access_key_id = AKIAFILE2\naws_secret_access_key = file-secret-canary-2\n",
    )
    .unwrap();
    eventually(
        "the rotated key is used",
        Duration::from_secs(10),
        || async {
            s.chat("/file/model/m/converse", false).await;
            key_id(m.recorded().last().unwrap()) == "AKIAFILE2"
        },
    )
    .await;
    assert_no_leak(
        &s,
        &[
            "file-secret-canary-1",
            "file-secret-canary-2",
            "env-secret-canary",
        ],
    )
    .await;
}

fn oauth_yaml(upstream: &str, token_url: &str, extra: &str) -> String {
    format!(
        r#"providers:
  idp:
    kind: openai_compatible
    base_url: {upstream}
    auth:
      type: oauth2
      flow: client_credentials
      token_url: {token_url}
      client_id: sidecar-client
      client_secret: "oauth-secret-canary"
      scope: llm.invoke
{extra}
routes:
  - match: {{ path_prefix: /v1 }}
    provider: idp
    rewrite_prefix: /v1
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_concurrent_requests_across_expiry_share_one_refresh() {
    capture_logs();
    let ts = token_server::start(1).await;
    ts.set(|b| {
        b.client = Some(("sidecar-client".into(), "oauth-secret-canary".into()));
        b.delay = Duration::from_millis(300);
    });
    let m = default_mock().await;
    let s = TestSidecar::start(&oauth_yaml(&m.url(), &ts.url(), "      refresh_before: 0s")).await;
    let r = s.get("/v1/models").await;
    assert_eq!(r.status(), 200);
    assert_eq!(ts.calls(), 1);
    assert_eq!(
        m.recorded()[0].header("authorization"),
        Some("Bearer tok-1")
    );
    assert_eq!(
        ts.behaviour
            .lock()
            .unwrap()
            .last_form
            .get("scope")
            .map(String::as_str),
        Some("llm.invoke")
    );

    // tok-1 expires after 1 s. 500 requests at once then: one refresh, shared by all.
    // tok-2 lives for an hour, so that however long the 500 take on a loaded machine, a
    // second refresh can only come from requests that failed to share the first.
    ts.set(|b| b.expires_in = 3600);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let (c, url) = (s.client.clone(), s.url("/v1/models"));
        set.spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap().unwrap(), 200);
    }
    assert_eq!(
        ts.calls(),
        2,
        "exactly one refresh for 500 concurrent requests"
    );
    let rec = m.recorded();
    assert_eq!(rec.len(), 501);
    assert!(rec[1..]
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer tok-2")));
    s.assert_metric(
        r#"llm_sidecar_oauth_token_fetches_total{provider="idp",result="success"}"#,
        2.0,
    )
    .await;
    assert_no_leak(&s, &["oauth-secret-canary", "tok-1", "tok-2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_a_401_refreshes_once_and_replays_once() {
    capture_logs();
    let ts = token_server::start(3600).await;
    // The provider accepts only the second token: tok-1 gets 401.
    let m = mock(MockOptions {
        require_key: Some("tok-2".into()),
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&oauth_yaml(&m.url(), &ts.url(), "")).await;
    let body = serde_json::to_vec(&chat_body(false)).unwrap();
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the client never sees the 401");
    assert_eq!(ts.calls(), 2, "one refresh");
    let rec = m.recorded();
    assert_eq!(rec.len(), 2, "one replay");
    assert_eq!(rec[0].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(rec[1].header("authorization"), Some("Bearer tok-2"));
    assert_eq!(
        rec[1].body.as_ref(),
        body.as_slice(),
        "the replay carries the whole body"
    );

    // A provider that refuses every token: one refresh, one replay, then the 401 is the
    // client's answer (no loop).
    let m2 = mock(MockOptions {
        require_key: Some("never".into()),
        ..Default::default()
    })
    .await;
    let ts2 = token_server::start(3600).await;
    let s2 = TestSidecar::start(&oauth_yaml(&m2.url(), &ts2.url(), "")).await;
    let r = s2.get("/v1/models").await;
    assert_eq!(r.status(), 401);
    assert_eq!(ts2.calls(), 2);
    assert_eq!(m2.recorded().len(), 2);
    assert_no_leak(&s, &["oauth-secret-canary", "tok-1", "tok-2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_failed_refreshes_back_off_and_keep_the_valid_token() {
    capture_logs();
    let ts = token_server::start(6).await;
    let m = default_mock().await;
    // Tokens live 6 s and are refreshed in their last 5 s: right away.
    let s = TestSidecar::start(&oauth_yaml(&m.url(), &ts.url(), "      refresh_before: 5s")).await;
    assert_eq!(s.get("/v1/models").await.status(), 200);
    ts.set(|b| b.fail = true);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1800) {
        let r = s.get("/v1/models").await;
        assert_eq!(r.status(), 200, "the still-valid token keeps serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = ts.calls() - 1;
    // Backoff 0.5 s, 1 s, ...: a few tries in 1.8 s, not one per request (~30 requests).
    assert!((1..=4).contains(&failed), "{failed} refresh tries");
    assert!(m
        .recorded()
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer tok-1")));
    ts.set(|b| b.fail = false);
    eventually(
        "a refresh succeeds and the new token is used",
        Duration::from_secs(10),
        || async {
            s.get("/v1/models").await;
            m.recorded().last().unwrap().header("authorization") != Some("Bearer tok-1")
        },
    )
    .await;
    let metrics = s.metrics().await;
    assert!(
        metric_value(
            &metrics,
            r#"llm_sidecar_oauth_token_fetches_total{provider="idp",result="failure"}"#
        ) >= 1.0
    );
    assert_no_leak(&s, &["oauth-secret-canary"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_service_account_jwt_verifies_with_the_public_key() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let pubkey = dir.path().join("pub.der");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is needed to make a test RSA key");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    run(&[
        "rsa",
        "-in",
        key.to_str().unwrap(),
        "-RSAPublicKey_out",
        "-outform",
        "DER",
        "-out",
        pubkey.to_str().unwrap(),
    ]);
    let ts = token_server::start(3600).await;
    ts.set(|b| b.jwt_key = Some(std::fs::read(&pubkey).unwrap()));
    let sa = json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "kid-123",
        "private_key": std::fs::read_to_string(&key).unwrap(),
        "client_email": "sidecar@test-project.iam.gserviceaccount.com",
        "token_uri": ts.url(),
    });
    let sa_file = dir.path().join("sa.json");
    std::fs::write(&sa_file, sa.to_string()).unwrap();
    let m = default_mock().await;
    let yaml = format!(
        r#"providers:
  vertex:
    kind: vertex_ai
    base_url: {url}
    auth: {{ type: oauth2, flow: google_service_account, service_account: "${{file:{sa}}}" }}
routes:
  - match: {{ path_prefix: /vertex }}
    provider: vertex
"#,
        url = m.url(),
        sa = sa_file.display()
    );
    let s = TestSidecar::start(&yaml).await;
    let r = s.chat("/vertex/v1/chat/completions", false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        m.recorded()[0].header("authorization"),
        Some("Bearer tok-1")
    );
    let claims = ts
        .behaviour
        .lock()
        .unwrap()
        .last_claims
        .clone()
        .expect("the assertion verified");
    assert_eq!(
        claims["iss"],
        "sidecar@test-project.iam.gserviceaccount.com"
    );
    assert_eq!(claims["aud"], ts.url().as_str());
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    let private_key_line = std::fs::read_to_string(&key)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    assert_no_leak(&s, &[&private_key_line, "tok-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pools_eject_cool_down_and_run_out() {
    capture_logs();
    let (addr, seen) = by_credential(vec![
        ("Bearer pool-bad-canary".into(), 401, None),
        ("Bearer pool-limited-canary".into(), 429, Some("1".into())),
    ])
    .await;
    let yaml = |keys: &str| {
        format!(
            r#"providers:
  pool:
    kind: openai
    base_url: http://{addr}
    auth:
      type: bearer
      strategy: round_robin
      keys:
{keys}
routes:
  - match: {{ path_prefix: /v1 }}
    provider: pool
    rewrite_prefix: /v1
    # The pool's own bookkeeping, one attempt per request (retries: resilience tests).
    retry: {{ max_attempts: 1 }}
"#
        )
    };
    let keys = "        - { name: bad, key: pool-bad-canary }\n        - { name: limited, key: pool-limited-canary }\n        - { name: good, key: pool-good-canary }";
    let s = TestSidecar::start(&yaml(keys)).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            s.chat("/v1/chat/completions", false)
                .await
                .status()
                .as_u16(),
        );
    }
    // bad → 401 (ejected), limited → 429 (cooling 1 s), then only good.
    assert_eq!(statuses, vec![401, 429, 200, 200, 200]);
    let used: Vec<String> = seen.lock().unwrap().clone();
    assert_eq!(&used[2..], &["Bearer pool-good-canary"; 3]);
    let metrics = s.metrics().await;
    let m = |line: &str| metric_value(&metrics, line);
    s.assert_metric(
        r#"llm_sidecar_upstream_key_ejected{key="bad",provider="pool"}"#,
        1.0,
    )
    .await;
    s.assert_metric(
        r#"llm_sidecar_upstream_key_events_total{event="ejected",key="bad",provider="pool"}"#,
        1.0,
    )
    .await;
    s.assert_metric(
        r#"llm_sidecar_upstream_key_events_total{event="cooldown",key="limited",provider="pool"}"#,
        1.0,
    )
    .await;
    s.assert_metric(
        r#"llm_sidecar_upstream_key_requests_total{key="good",provider="pool"}"#,
        3.0,
    )
    .await;
    assert!(
        m(
            r#"llm_sidecar_upstream_key_cooldown_until_timestamp_seconds{key="limited",provider="pool"}"#
        ) > 0.0
    );
    // After the cooldown the limited key is back in turn.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut later = Vec::new();
    for _ in 0..2 {
        later.push(
            s.chat("/v1/chat/completions", false)
                .await
                .status()
                .as_u16(),
        );
    }
    later.sort();
    assert_eq!(later, vec![200, 429]);

    // A pool with no good key: 401, 429, then 503 with Retry-After.
    let keys = "        - { name: bad, key: pool-bad-canary }\n        - { name: limited, key: pool-limited-canary }";
    let s2 = TestSidecar::start(&yaml(keys)).await;
    assert_eq!(s2.chat("/v1/chat/completions", false).await.status(), 401);
    assert_eq!(s2.chat("/v1/chat/completions", false).await.status(), 429);
    let r = s2.chat("/v1/chat/completions", false).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "keys_unavailable");
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 ejected after 401/403, 1 cooling down after 429"),
        "{v}"
    );
    assert_no_leak(
        &s,
        &["pool-bad-canary", "pool-limited-canary", "pool-good-canary"],
    )
    .await;
    assert_no_leak(&s2, &["pool-bad-canary", "pool-limited-canary"]).await;
}

/// A 429's `Retry-After` belongs to the key it refused: while another key of the pool is
/// free, the request goes there at once instead of waiting out the cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_key_never_holds_up_requests_another_key_can_take() {
    capture_logs();
    let (addr, seen) = by_credential(vec![(
        "Bearer pool-limited-canary".into(),
        429,
        Some("1".into()),
    )])
    .await;
    let yaml = format!(
        r#"providers:
  pool:
    kind: openai
    base_url: http://{addr}
    auth:
      type: bearer
      strategy: round_robin
      keys:
        - {{ name: limited, key: pool-limited-canary }}
        - {{ name: free, key: pool-free-canary }}
routes:
  - match: {{ path_prefix: /v1 }}
    provider: pool
    rewrite_prefix: /v1
    # A long backoff: a retry that waited it (instead of going at once) would show.
    retry: {{ max_attempts: 2, backoff: 5s, backoff_max: 5s }}
"#
    );
    let s = TestSidecar::start(&yaml).await;
    // Long enough for the limited key's 1 s cooldown to end twice, so round-robin hands
    // it requests again.
    let mut slowest = Duration::ZERO;
    for _ in 0..12 {
        let t = std::time::Instant::now();
        let r = s.chat("/v1/chat/completions", false).await;
        assert_eq!(r.status(), 200);
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let used = seen.lock().unwrap().clone();
    let limited = used
        .iter()
        .filter(|c| c.as_str() == "Bearer pool-limited-canary")
        .count();
    assert!(
        limited >= 2,
        "the limited key came back into turn after its cooldown: {used:?}"
    );
    // The provider answers at once; waiting out the refused key's Retry-After takes 1 s
    // (and the backoff up to 5 s).
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited {slowest:?} though another key was free"
    );
    assert_eq!(
        used.len(),
        12 + limited,
        "each 429 was retried once, on the free key"
    );
    assert_no_leak(&s, &["pool-limited-canary", "pool-free-canary"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_pools_share_requests_by_weight() {
    capture_logs();
    let (addr, seen) = by_credential(vec![]).await;
    let yaml = format!(
        r#"providers:
  pool:
    kind: anthropic
    base_url: http://{addr}
    auth:
      type: header
      name: x-api-key
      strategy: weighted
      keys:
        - {{ name: big, key: weight-big-canary, weight: 3 }}
        - {{ name: small, key: weight-small-canary, weight: 1 }}
routes:
  - match: {{ path_prefix: /anthropic }}
    provider: pool
"#
    );
    let s = TestSidecar::start(&yaml).await;
    for _ in 0..40 {
        assert_eq!(s.chat("/anthropic/v1/messages", false).await.status(), 200);
    }
    let used = seen.lock().unwrap().clone();
    assert_eq!(
        used.iter().filter(|k| *k == "weight-big-canary").count(),
        30
    );
    assert_eq!(
        used.iter().filter(|k| *k == "weight-small-canary").count(),
        10
    );
    assert_no_leak(&s, &["weight-big-canary", "weight-small-canary"]).await;
}

fn tenants_yaml(upstream: &str, tenant_section: &str) -> String {
    format!(
        r#"{tenant_section}
tenants:
  team-a:
    attributes: {{ cost_center: cc-100 }}
    provider_keys: {{ mock: "tenant-a-key-canary" }}
  team-b:
    attributes: {{ cost_center: cc-200 }}
providers:
  mock:
    kind: openai
    base_url: {upstream}/v1
    auth: {{ type: bearer, token: "shared-key-canary" }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: mock
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_from_a_trusted_header() {
    capture_logs();
    let m = default_mock().await;
    let tenant = r#"tenant:
  source: header
  header: x-llm-tenant
  headers: { x-tenant: "{tenant}", x-cost-center: "{tenant.cost_center}" }"#;
    let s = TestSidecar::start(&tenants_yaml(&m.url(), tenant)).await;
    let send = |t: Option<&'static str>| {
        let (c, url) = (s.client.clone(), s.url("/openai/v1/chat/completions"));
        async move {
            let mut r = c.post(url).json(&chat_body(false));
            if let Some(t) = t {
                r = r.header("x-llm-tenant", t);
            }
            r.send().await.unwrap()
        }
    };
    let r = send(None).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "tenant_missing");
    let r = send(Some("team-z")).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "tenant_unknown");
    assert_eq!(send(Some("team-a")).await.status(), 200);
    assert_eq!(send(Some("team-b")).await.status(), 200);
    let rec = m.recorded();
    assert_eq!(rec.len(), 2);
    assert_eq!(rec[0].header("x-tenant"), Some("team-a"));
    assert_eq!(rec[0].header("x-cost-center"), Some("cc-100"));
    assert_eq!(
        rec[0].header("authorization"),
        Some("Bearer tenant-a-key-canary"),
        "team-a's own key"
    );
    assert!(
        rec[0].headers.get("x-llm-tenant").is_none(),
        "the tenant header is not forwarded"
    );
    assert_eq!(rec[1].header("x-cost-center"), Some("cc-200"));
    assert_eq!(
        rec[1].header("authorization"),
        Some("Bearer shared-key-canary")
    );

    // The same header from a client outside the trusted sources is refused.
    let untrusted = tenant.replace(
        "  header: x-llm-tenant",
        "  header: x-llm-tenant\n  trusted_sources: [10.0.0.0/8]",
    );
    let s2 = TestSidecar::start(&tenants_yaml(&m.url(), &untrusted)).await;
    let r = s2
        .client
        .post(s2.url("/openai/v1/chat/completions"))
        .header("x-llm-tenant", "team-a")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "tenant_untrusted");
    assert_eq!(m.recorded().len(), 2);
    assert_no_leak(&s, &["tenant-a-key-canary", "shared-key-canary"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_keys_map_to_tenants_and_are_swapped_for_provider_keys() {
    capture_logs();
    let m = default_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let vk_file = dir.path().join("vk-b");
    std::fs::write(&vk_file, "vk-team-b-canary-0123456789\n").unwrap();
    let tenant = format!(
        r#"tenant:
  source: virtual_key
  headers: {{ x-tenant: "{{tenant}}" }}
virtual_keys:
  - {{ key: "vk-team-a-canary-0123456789", tenant: team-a }}
  - {{ key: "${{file:{}}}", tenant: team-b }}"#,
        vk_file.display()
    );
    let s = TestSidecar::start(&tenants_yaml(&m.url(), &tenant)).await;
    // The official SDK carries the key the app was given.
    let script = r#"
import sys, openai
base = sys.argv[1]
for key, expect in [("vk-team-a-canary-0123456789", None), ("vk-team-b-canary-0123456789", None)]:
    c = openai.OpenAI(base_url=base + "/openai/v1", api_key=key, max_retries=0)
    c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
bad = openai.OpenAI(base_url=base + "/openai/v1", api_key="not-a-key-this-sidecar-issued", max_retries=0)
try:
    bad.models.list()
    raise SystemExit("an unknown virtual key must be refused")
except openai.AuthenticationError as e:
    assert "not valid for this sidecar" in str(e), str(e)
print("VK-OK")
"#;
    let base = format!("http://{}", s.sidecar().reverse_addr());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", script, &base])
            .env("NO_PROXY", "*")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = m.recorded();
    assert_eq!(rec.len(), 2, "the unknown key never reached the provider");
    assert_eq!(rec[0].header("x-tenant"), Some("team-a"));
    assert_eq!(
        rec[0].header("authorization"),
        Some("Bearer tenant-a-key-canary")
    );
    assert_eq!(rec[1].header("x-tenant"), Some("team-b"));
    assert_eq!(
        rec[1].header("authorization"),
        Some("Bearer shared-key-canary")
    );
    let r = s.get("/openai/v1/models").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "key_missing");
    assert_no_leak(
        &s,
        &[
            "vk-team-a-canary",
            "vk-team-b-canary",
            "tenant-a-key-canary",
            "shared-key-canary",
        ],
    )
    .await;
}

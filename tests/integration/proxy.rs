//! The request path: routing, credential and tenant injection, bodies, sidecar errors.

use crate::support::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn tenant_block() -> &'static str {
    "tenant:\n  id: team-a\n  headers: { x-llm-tenant: \"{tenant}\", x-llm-team: \"team={tenant}\" }\n  strip: [x-internal-debug]\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injects_credentials_and_replaces_forged_ones() {
    let m = default_mock().await;
    let s = TestSidecar::start(&format!(
        "{}{}",
        tenant_block(),
        openai_to(&m.url(), "sk-provider-key")
    ))
    .await;
    let r = s
        .client
        .post(s.url("/openai/v1/chat/completions?trace=1"))
        .header("authorization", "Bearer sk-forged-by-app")
        .header("x-api-key", "forged")
        .header("api-key", "forged")
        .header("x-llm-tenant", "team-evil")
        .header("X-LLM-Team", "team=evil")
        .header("x-internal-debug", "1")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");

    let rec = m.recorded();
    assert_eq!(rec.len(), 1);
    let got = &rec[0];
    assert_eq!(
        got.path, "/v1/chat/completions?trace=1",
        "prefix rewritten, query kept"
    );
    let auth: Vec<_> = got.headers.get_all("authorization").iter().collect();
    assert_eq!(
        auth,
        vec!["Bearer sk-provider-key"],
        "exactly one credential, the provider's"
    );
    assert!(got.headers.get("x-api-key").is_none());
    assert!(got.headers.get("api-key").is_none());
    let tenant: Vec<_> = got.headers.get_all("x-llm-tenant").iter().collect();
    assert_eq!(tenant, vec!["team-a"], "forged tenant header replaced");
    assert_eq!(got.header("x-llm-team"), Some("team=team-a"));
    assert!(
        got.headers.get("x-internal-debug").is_none(),
        "tenant.strip removes headers"
    );
    assert_eq!(got.header("host"), Some(m.addr().to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_header_cannot_strip_the_injected_credential() {
    let m = default_mock().await;
    let s = TestSidecar::start(&format!(
        "{}{}",
        tenant_block(),
        openai_to(&m.url(), "sk-provider-key")
    ))
    .await;
    // A raw HTTP/1.1 request: a client (or attacker) nominating the credential and tenant
    // headers as hop-by-hop so a proxy would drop them.
    let body = serde_json::to_vec(&chat_body(false)).unwrap();
    let raw = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\nConnection: keep-alive, authorization, x-llm-tenant\r\nAuthorization: Bearer forged\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let resp = raw_request(s.sidecar().reverse_addr(), raw.as_bytes(), &body).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let got = &m.recorded()[0];
    assert_eq!(got.header("authorization"), Some("Bearer sk-provider-key"));
    assert_eq!(got.header("x-llm-tenant"), Some("team-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_body_arrives_byte_identical() {
    let m = default_mock().await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    // A JSON body of 10 MiB with content that is not all one byte.
    let filler: String = (0..10 * 1024 * 1024 / 16)
        .map(|i| format!("{:015x} ", (i as u64).wrapping_mul(7919)))
        .collect();
    let body = serde_json::to_vec(
        &json!({"model": "m", "messages": [{"role": "user", "content": filler}]}),
    )
    .unwrap();
    assert!(body.len() > 10 * 1024 * 1024);
    let want = hex::encode(Sha256::digest(&body));
    for chunked in [false, true] {
        m.clear();
        let req = s.client.post(s.url("/openai/v1/chat/completions"));
        let req = if chunked {
            // A streamed body goes out with Transfer-Encoding: chunked.
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                body.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
            req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
        } else {
            req.body(body.clone())
        };
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "chunked={chunked}");
        let got = &m.recorded()[0];
        assert_eq!(got.body.len(), body.len(), "chunked={chunked}");
        assert_eq!(
            hex::encode(Sha256::digest(&got.body)),
            want,
            "chunked={chunked}"
        );
        assert_eq!(
            got.header("content-length"),
            Some(body.len().to_string().as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_errors_are_provider_shaped() {
    let m = default_mock().await;
    let yaml = format!(
        r#"request: {{ max_body_bytes: 1KiB, max_header_bytes: 2KiB }}
providers:
  mock:
    kind: openai
    base_url: {url}/v1
  claude:
    kind: anthropic
    base_url: {url}
    optional: true
    auth: {{ type: header, name: x-api-key, value: "${{env:LLM_SIDECAR_TEST_SURELY_UNSET}}" }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: mock
  - match: {{ path_prefix: /anthropic }}
    provider: claude
"#,
        url = m.url()
    );
    let s = TestSidecar::start(&yaml).await;

    let r = s.get("/nope/v1/models").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "no_route");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_route");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/nope/v1/models"));

    let r = s
        .client
        .post(s.url("/anthropic/v1/messages"))
        .json(&json!({"model": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "provider_disabled");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "Anthropic shape: {v}");
    assert!(
        !v.to_string().contains("LLM_SIDECAR_TEST_SURELY_UNSET"),
        "no internals in responses"
    );

    let big = "x".repeat(2000);
    let r = s
        .client
        .post(s.url("/openai/v1/chat/completions"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "body_too_large");

    // A chunked body has no declared length: refused as soon as it passes the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b'x'; 600])).collect();
    let r = s
        .client
        .post(s.url("/openai/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let r = s
        .client
        .get(s.url("/openai/v1/models"))
        .header("x-big", "y".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "headers_too_large");

    // Nothing of the above reached the provider; a normal request still works.
    assert_eq!(m.request_count(), 0);
    let r = s.get("/openai/v1/models").await;
    assert_eq!(r.status(), 200);
    assert_eq!(m.request_count(), 1);

    // The 200 is counted when its exchange ends, which can be just after the client has
    // the answer.
    let ok = r#"llm_sidecar_requests_total{provider="mock",route="mock",status="200"}"#;
    s.assert_metric(ok, 1.0).await;
    let text = s.metrics().await;
    assert!(
        text.contains(r#"llm_sidecar_requests_total{provider="-",route="-",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"llm_sidecar_requests_total{provider="mock",route="mock",status="413"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"llm_sidecar_requests_total{provider="mock",route="mock",status="200"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_gets_a_default_version_header() {
    let m = default_mock().await;
    let yaml = format!(
        "providers:\n  claude:\n    kind: anthropic\n    base_url: {}\n    auth: {{ type: header, name: x-api-key, value: sk-ant }}\nroutes:\n  - match: {{ path_prefix: /anthropic }}\n    provider: claude\n",
        m.url()
    );
    let s = TestSidecar::start(&yaml).await;
    let body = json!({"model": "claude-3-5-haiku", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]});
    let r = s
        .client
        .post(s.url("/anthropic/v1/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .client
        .post(s.url("/anthropic/v1/messages"))
        .header("anthropic-version", "2024-01-01")
        .header("x-api-key", "forged")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = m.recorded();
    assert_eq!(rec[0].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        rec[1].header("anthropic-version"),
        Some("2024-01-01"),
        "a client's own version is kept"
    );
    assert_eq!(rec[1].header("x-api-key"), Some("sk-ant"));
    assert_eq!(rec[1].path, "/v1/messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_502_and_host_routing_works() {
    let dead = crate::support::upstreams::closed_port();
    let m = default_mock().await;
    let yaml = format!(
        r#"providers:
  dead: {{ kind: openai_compatible, base_url: "http://{dead}" }}
  live: {{ kind: openai_compatible, base_url: "{live}" }}
routes:
  - match: {{ host: api.example.com }}
    provider: live
  - match: {{ path_prefix: / }}
    provider: dead
"#,
        live = m.url()
    );
    let s = TestSidecar::start(&yaml).await;
    let r = s.get("/v1/models").await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "upstream_connect");
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect to provider \"dead\""),
        "{v}"
    );

    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("host", "API.Example.com:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(m.recorded()[0].path, "/v1/models");
    assert_eq!(
        m.recorded()[0].header("host"),
        Some(m.addr().to_string().as_str()),
        "Host is the provider's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cleartext_clients_are_served() {
    let m = default_mock().await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // No Content-Length on an HTTP/2 stream body: the sidecar frames it itself.
    let body = serde_json::to_vec(&chat_body(false)).unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(7).map(|c| Ok(c.to_vec())).collect();
    let r = h2
        .post(s.url("/openai/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(
        status,
        200,
        "{text} {:?}",
        m.recorded().first().map(|r| (&r.headers, r.body.len()))
    );
    assert_eq!(m.recorded()[0].body.as_ref(), body.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pooled_connection_is_retried_with_the_whole_body() {
    let (addr, bodies) = crate::support::upstreams::closes_reused_connections().await;
    let s = TestSidecar::start(&openai_to(&format!("http://{addr}"), "k")).await;
    // 1 MiB: far beyond Pingora's 64 KiB replay buffer.
    let big = serde_json::to_vec(
        &json!({"model": "m", "messages": [{"role": "user", "content": "z".repeat(1 << 20)}]}),
    )
    .unwrap();
    for body in [
        serde_json::to_vec(&chat_body(false)).unwrap(),
        big.clone(),
        big,
    ] {
        // Each request after the first finds a pooled connection the upstream drops on
        // use; the sidecar must retry on a fresh one, not answer 502.
        let r = s
            .client
            .post(s.url("/openai/v1/chat/completions"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            bodies.lock().unwrap().last().unwrap(),
            &hex::encode(Sha256::digest(&body))
        );
    }
    assert_eq!(bodies.lock().unwrap().len(), 3);
    let reused = s
        .metric(r#"llm_sidecar_upstream_connections_total{provider="mock",reused="true"}"#)
        .await;
    assert!(
        reused >= 2.0,
        "the dead connections were really reused first ({reused})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_address_moves_on_to_the_next_one() {
    let m = default_mock().await;
    let port = m.addr().port();
    // multi.test has two addresses; nothing listens on the first.
    let resolver = llm_sidecar::upstream::dns::Resolver::fixed([(
        "multi.test".to_string(),
        vec!["127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap()],
    )]);
    let s = TestSidecar::start_with_resolver(
        &openai_to(&format!("http://multi.test:{port}"), "k"),
        resolver,
    )
    .await;
    for _ in 0..4 {
        let r = s.get("/openai/v1/models").await;
        assert_eq!(r.status(), 200);
    }
    let rec = m.recorded();
    assert_eq!(rec.len(), 4);
    assert_eq!(
        rec[0].header("host"),
        Some(format!("multi.test:{port}").as_str()),
        "Host is the configured name"
    );

    // A name that does not resolve is a 502 naming DNS.
    let s = TestSidecar::start_with_resolver(
        &openai_to("http://nowhere.test", "k"),
        llm_sidecar::upstream::dns::Resolver::fixed([]),
    )
    .await;
    let r = s.get("/openai/v1/models").await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "upstream_dns");
}

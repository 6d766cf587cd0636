//! Signing cost per scheme, for a 1 KiB and a 1 MiB request body.
//!
//! For `hmac` and `aws_sigv4` the body's SHA-256 is part of the cost (it is computed once
//! per exchange and shared by its attempts); each is measured with and without it. Beside
//! each, a naive way of doing the same work per request.
//!
//! `cargo bench --bench signers`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use llm_sidecar::auth::hmac::{HmacHeaders, HmacKeySpec, HmacSigner, TimestampUnit};
use llm_sidecar::auth::oauth2::{ClientAuth, Flow, TokenSource};
use llm_sidecar::auth::sigv4::{AwsCredentials, SigV4Signer};
use llm_sidecar::auth::static_key::{BearerToken, StaticHeader};
use llm_sidecar::auth::{Credential, SignContext, Signer};
use llm_sidecar::config::secret::Secret;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn request() -> RequestHeader {
    let mut r = RequestHeader::build(
        "POST",
        b"/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
        None,
    )
    .unwrap();
    r.insert_header("content-type", "application/json").unwrap();
    r.insert_header("user-agent", "OpenAI/Python 1.54.0")
        .unwrap();
    r
}

fn sign(signer: &dyn Signer, body: &[u8], hash: &str, credential: &Credential) -> RequestHeader {
    let mut req = request();
    let cx = SignContext {
        method: "POST",
        path_and_query: "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
        host: "bedrock-runtime.us-east-1.amazonaws.com",
        body,
        body_sha256: hash,
        now: SystemTime::now(),
        credential,
    };
    signer.sign(&mut req, &cx).unwrap();
    req
}

fn benches(c: &mut Criterion) {
    let keys = vec![(
        Arc::<str>::from("main"),
        Secret::new("sk-proj-0123456789abcdefghijklmnopqrstuvwxyz"),
    )];
    let bearer = StaticHeader::bearer(&keys).unwrap();
    let hmac = HmacSigner::new(
        HmacHeaders::default(),
        TimestampUnit::Millis,
        vec![HmacKeySpec {
            key_id: "app-1".into(),
            secret: Secret::new("a-fairly-long-shared-hmac-secret-value"),
        }],
    )
    .unwrap();
    let sigv4 = SigV4Signer::new(
        "us-east-1",
        "bedrock",
        &AwsCredentials {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: Some(Secret::new("session-token")),
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tokens = Arc::new(TokenSource::new(
        Arc::from("idp"),
        Flow::ClientCredentials {
            token_url: "https://127.0.0.1:1/token".into(),
            client_id: "id".into(),
            client_secret: Secret::new("secret"),
            scope: None,
            client_auth: ClientAuth::Basic,
            extra: vec![],
        },
        reqwest::Client::new(),
        Duration::from_secs(60),
        None,
    ));
    tokens.preload(
        "ya29.a0-an-access-token-of-realistic-length-0123456789",
        Duration::from_secs(3600),
    );
    let oauth = BearerToken::default();

    let key = Credential::Key(0);
    let fixed = Credential::Fixed;
    let mut g = c.benchmark_group("sign");
    g.bench_function("bearer", |b| b.iter(|| sign(&bearer, b"", "", &key)));
    g.bench_function("bearer_naive_format_per_request", |b| {
        b.iter(|| {
            let mut req = request();
            let v = format!(
                "Bearer {}",
                black_box("sk-proj-0123456789abcdefghijklmnopqrstuvwxyz")
            );
            req.insert_header("authorization", v).unwrap();
            req
        })
    });
    g.bench_function("oauth2_cached_token", |b| {
        b.iter(|| {
            let t = rt.block_on(tokens.get()).unwrap();
            sign(&oauth, b"", "", &Credential::Token(t))
        })
    });
    for (label, size) in [("1KiB", 1024usize), ("1MiB", 1 << 20)] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let hash = hex::encode(Sha256::digest(&body));
        g.bench_with_input(
            BenchmarkId::new("hmac_sign_only", label),
            &body,
            |b, body| b.iter(|| sign(&hmac, body, &hash, &key)),
        );
        g.bench_with_input(
            BenchmarkId::new("hmac_with_body_hash", label),
            &body,
            |b, body| b.iter(|| sign(&hmac, body, &hex::encode(Sha256::digest(body)), &key)),
        );
        g.bench_with_input(
            BenchmarkId::new("hmac_naive_key_per_request", label),
            &body,
            |b, body| {
                b.iter(|| {
                    let k = ring::hmac::Key::new(
                        ring::hmac::HMAC_SHA256,
                        black_box(b"a-fairly-long-shared-hmac-secret-value"),
                    );
                    let s = format!(
                        "POST\n/x\n1700000000000\nnonce\n{}",
                        hex::encode(Sha256::digest(body))
                    );
                    ring::hmac::sign(&k, s.as_bytes())
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("sigv4_sign_only", label),
            &body,
            |b, body| b.iter(|| sign(&sigv4, body, &hash, &fixed)),
        );
        g.bench_with_input(
            BenchmarkId::new("sigv4_with_body_hash", label),
            &body,
            |b, body| b.iter(|| sign(&sigv4, body, &hex::encode(Sha256::digest(body)), &fixed)),
        );
    }
    g.finish();
}

criterion_group!(signers, benches);
criterion_main!(signers);

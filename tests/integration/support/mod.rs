//! Test harness: real servers on 127.0.0.1:0, a test CA, and the real sidecar started
//! in-process from a YAML file.

#![allow(dead_code)]

pub mod leaks;
pub mod metrics;
pub mod otlp;
pub mod process;
pub mod raw;
pub mod redis;
pub mod token_server;
pub mod upstreams;

pub use leaks::{assert_no_leak, capture_logs};
pub use metrics::series;
pub use process::{binary_config, signal, spawn_binary, wait_exit, ChildGuard};
pub use raw::{head_complete, raw_request, send_raw, Answer};

use llm_sidecar::config::{self, ConfigStore, ReloadOutcome};
use llm_sidecar::mock::{self, MockOptions, MockServer};
use llm_sidecar::observability::metrics::Metrics;
use llm_sidecar::upstream::dns::Resolver;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The bound a test waits for state that another task updates.
pub const WAIT: Duration = metrics::METRIC_WAIT;

/// Retries `check` until it returns true, for at most `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A throwaway certificate authority.
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for these names (IP literals become IP SANs).
    pub fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        for n in names {
            match n.parse::<std::net::IpAddr>() {
                Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => params
                    .subject_alt_names
                    .push(SanType::DnsName((*n).try_into().unwrap())),
            }
        }
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    /// rustls server config with ALPN h2 + http/1.1 (or only the given protocols).
    pub fn server_config(&self, names: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let (certs, key) = self.leaf(names);
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let p = dir.join("test-ca.pem");
        std::fs::write(&p, &self.cert_pem).unwrap();
        p
    }
}

/// Starts the mock provider with recording on.
pub async fn mock(opts: MockOptions) -> MockServer {
    mock::start(MockOptions {
        record: 1000,
        ..opts
    })
    .await
    .unwrap()
}

pub async fn default_mock() -> MockServer {
    mock(MockOptions {
        interval: Duration::from_millis(1),
        ..Default::default()
    })
    .await
}

/// Listeners on port 0 unless the test sets its own.
pub fn with_listeners(yaml: &str) -> String {
    if yaml.contains("listeners:") {
        format!("version: 1\n{yaml}")
    } else {
        format!(
            "version: 1\nlisteners: {{ reverse: \"127.0.0.1:0\", admin: \"127.0.0.1:0\" }}\n{yaml}"
        )
    }
}

/// The real sidecar, started in this process from a config file in a temp dir.
pub struct TestSidecar {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub sidecar: Option<llm_sidecar::Sidecar>,
    pub client: reqwest::Client,
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl TestSidecar {
    /// `yaml` is everything after `version: 1` (listeners default to 127.0.0.1:0).
    pub async fn start(yaml: &str) -> TestSidecar {
        Self::start_with_env(yaml, config::process_env()).await
    }

    pub async fn start_with_env(yaml: &str, env: config::EnvSource) -> TestSidecar {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("sidecar.yaml");
        std::fs::write(&config_path, with_listeners(yaml)).unwrap();
        Self::start_at(dir, config_path, env).await
    }

    pub async fn start_at(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        env: config::EnvSource,
    ) -> TestSidecar {
        Self::start_full(dir, config_path, env, Resolver::system()).await
    }

    /// With a given DNS resolver (e.g. `Resolver::fixed` for names with several addresses).
    pub async fn start_with_resolver(yaml: &str, resolver: Arc<Resolver>) -> TestSidecar {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("sidecar.yaml");
        std::fs::write(&config_path, with_listeners(yaml)).unwrap();
        Self::start_full(dir, config_path, config::process_env(), resolver).await
    }

    async fn start_full(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        env: config::EnvSource,
        resolver: Arc<Resolver>,
    ) -> TestSidecar {
        let store = match ConfigStore::open(&config_path, env, Metrics::new()) {
            Ok(s) => s,
            Err(e) => panic!("test config is invalid:\n{e}"),
        };
        let sidecar = llm_sidecar::build_server(
            store,
            llm_sidecar::Options {
                handle_signals: false,
                resolver: Some(resolver),
            },
        )
        .await
        .unwrap();
        TestSidecar {
            dir,
            config_path,
            sidecar: Some(sidecar),
            client: http_client(),
        }
    }

    pub fn sidecar(&self) -> &llm_sidecar::Sidecar {
        self.sidecar.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.sidecar().reverse_addr(), path)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{}", self.sidecar().admin_addr(), path)
    }

    pub async fn get_text(&self, url: &str) -> String {
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.get_text(&self.admin("/metrics")).await
    }

    /// The value of a series now (see [`series`]); a series that is not there fails.
    /// For a value that the end of an exchange writes, use [`Self::assert_metric`].
    pub async fn metric(&self, selector: &str) -> f64 {
        series(selector).value(&self.metrics().await)
    }

    /// For "it never happened": 0 or no such series yet; the metric must exist.
    pub async fn metric_zero_or_absent(&self, selector: &str) -> f64 {
        series(selector).zero_or_absent(&self.metrics().await)
    }

    /// Polls `/metrics` until the series has `expected`, or fails after
    /// [`metrics::METRIC_WAIT`] with what it holds.
    pub async fn assert_metric(&self, selector: &str, expected: f64) {
        series(selector)
            .assert_in(|| self.metrics(), expected)
            .await
    }

    /// Polls `/metrics` until `ok(value)` holds for the series; returns that value.
    pub async fn wait_metric(&self, selector: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
        series(selector).wait_for(|| self.metrics(), what, ok).await
    }

    pub async fn reload(&self) -> ReloadOutcome {
        self.sidecar().reload().await.unwrap()
    }

    /// Overwrites the config file in place (same inode).
    pub fn write_in_place(&self, yaml: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.config_path)
            .unwrap();
        f.write_all(with_listeners(yaml).as_bytes()).unwrap();
        f.sync_all().unwrap();
    }

    /// Writes a temp file next to the config and renames it over (what editors do).
    pub fn rename_replace(&self, yaml: &str) {
        let tmp = self.dir.path().join(".sidecar.yaml.tmp");
        std::fs::write(&tmp, with_listeners(yaml)).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    pub async fn shutdown(mut self) -> llm_sidecar::ShutdownReport {
        self.sidecar
            .take()
            .unwrap()
            .shutdown_with_grace(Duration::from_secs(5))
            .await
    }
}

/// The `/metrics` text of a sidecar (another process) at its admin address.
pub async fn metrics_at(c: &reqwest::Client, admin: &str) -> String {
    c.get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of a series in a `/metrics` text (see [`series`]); a series that is not
/// there fails the test.
pub fn metric_value(text: &str, selector: &str) -> f64 {
    series(selector).value(text)
}

/// A provider + route block for the mock (OpenAI shape, bearer auth).
pub fn openai_to(base: &str, token: &str) -> String {
    format!(
        r#"providers:
  mock:
    kind: openai
    base_url: {base}/v1
    auth: {{ type: bearer, token: "{token}" }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: mock
"#
    )
}

pub fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello"}]
    })
}

/// Reads a response body to its end: the text, and whether it ended cleanly (false when
/// the connection or stream was cut).
/// A streaming chat asking for 400 tokens with usage reported; read to the end. The
/// status.
pub async fn long_stream(client: reqwest::Client, url: String) -> u16 {
    let body = serde_json::json!({
        "model": "gpt-4o-mini", "stream": true, "max_tokens": 400,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Write a long story"}]
    });
    let r = client.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let _ = read_stream(r).await;
    status
}

pub async fn read_stream(r: reqwest::Response) -> (String, bool) {
    use futures_util::StreamExt;
    let mut body = r.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => return (text, false),
        }
    }
    (text, true)
}

impl TestSidecar {
    /// GETs `path` on the proxy listener.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// POSTs the standard chat body to `path`, streaming or not.
    pub async fn chat(&self, path: &str, stream: bool) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&chat_body(stream))
            .send()
            .await
            .unwrap()
    }

    /// A streaming chat that asks for usage in its last event (`include_usage`).
    pub async fn stream_with_usage(&self, path: &str) -> reqwest::Response {
        let mut body = chat_body(true);
        body["stream_options"] = serde_json::json!({"include_usage": true});
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

//! HTTPS_PROXY mode: interception with the local CA, pass-through tunnels, refusals, the
//! address guard, proxy users, and the CA's name constraint, with curl, openssl, the
//! official OpenAI SDK and httpx as clients.
//!
//! The provider mock stands in for `api.openai.com`: it serves a certificate for that
//! name from a test CA, and `dns.overrides` points the name at its port. SNI, certificate
//! verification and `Host` all use the real name.

use crate::support::*;
use llm_sidecar::forward::ca;
use llm_sidecar::mock::{MockOptions, MockServer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REAL_KEY: &str = "sk-real-canary-4f1b";

struct Fwd {
    m: MockServer,
    s: TestSidecar,
    /// The root apps trust (`ca.pem` from `ca init`).
    ca_pem: PathBuf,
    ca_dir: tempfile::TempDir,
    _upstream: tempfile::TempDir,
}

impl Fwd {
    fn addr(&self) -> SocketAddr {
        self.s.sidecar().forward_addr().unwrap()
    }

    fn proxy_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// A client that uses the sidecar as its proxy and trusts only `root`.
    fn client(&self, root: &Path) -> reqwest::Client {
        let pem = std::fs::read(root).unwrap();
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(self.proxy_url()).unwrap())
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }
}

fn init_ca(dir: &Path, domains: &[&str]) {
    ca::init_dir(dir, domains).unwrap();
}

/// The sidecar with its forward listener, the mock as api.openai.com, and `extra` added to
/// the `forward` section.
async fn start(extra: &str, overrides: &str, tenants: &str) -> Fwd {
    start_with(MockOptions::default(), extra, overrides, tenants).await
}

async fn start_with(opts: MockOptions, extra: &str, overrides: &str, tenants: &str) -> Fwd {
    let upstream_ca = TestCa::new("provider test CA");
    let m = mock(MockOptions {
        tls: Some(upstream_ca.server_config(&["api.openai.com"], &[b"h2", b"http/1.1"])),
        require_key: Some(REAL_KEY.into()),
        ..opts
    })
    .await;
    let upstream = tempfile::tempdir().unwrap();
    let upstream_pem = upstream_ca.write_pem(upstream.path());
    let ca_dir = tempfile::tempdir().unwrap();
    init_ca(ca_dir.path(), &["api.openai.com"]);
    let yaml = format!(
        r#"listeners: {{ reverse: "127.0.0.1:0", admin: "127.0.0.1:0", forward: "127.0.0.1:0" }}
dns:
  overrides:
    api.openai.com: "{mock}"
{overrides}
tenant:
  id: team-a
  headers: {{ x-tenant: "{{tenant}}" }}
{tenants}
forward:
  ca: {{ dir: {ca} }}
{extra}
providers:
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
    auth: {{ type: bearer, token: {REAL_KEY} }}
    tls: {{ ca_file: {upstream_pem} }}
routes:
  - match: {{ host: api.openai.com }}
    provider: openai
"#,
        mock = m.addr(),
        ca = ca_dir.path().display(),
        upstream_pem = upstream_pem.display(),
    );
    let s = TestSidecar::start(&yaml).await;
    Fwd {
        m,
        s,
        ca_pem: ca_dir.path().join(ca::ROOT_CERT),
        ca_dir,
        _upstream: upstream,
    }
}

/// Runs a blocking command on the blocking pool and returns (exit ok, stdout, stderr).
async fn run(mut cmd: Command) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("command not found");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn curl(f: &Fwd) -> Command {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "20",
        "--proxy",
        &f.proxy_url(),
        "--cacert",
    ])
    .arg(&f.ca_pem)
    .env_remove("HTTPS_PROXY")
    .env_remove("HTTP_PROXY")
    .env_remove("https_proxy")
    .env_remove("http_proxy")
    .env_remove("NO_PROXY")
    .env_remove("no_proxy");
    c
}

/// Sends raw bytes to the forward listener and reads until it closes.
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the proxy must answer and close")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// CONNECTs to `host:443` and starts TLS with `sni`, trusting `root`.
async fn tls_through(
    addr: SocketAddr,
    host: &str,
    sni: &str,
    root: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(root).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    connector.connect(name, s).await
}

fn chat_json() -> String {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello"}]
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_proxy_gets_the_key_and_tenant_injected() {
    let f = start("", "", "").await;
    for version in ["--http1.1", "--http2"] {
        let mut c = curl(&f);
        c.args([
            version,
            "-w",
            "\n%{http_code} %{http_version}",
            "https://api.openai.com/v1/chat/completions",
            "-H",
            "Authorization: Bearer sk-app-dummy",
            "-H",
            "x-tenant: forged",
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(chat_json());
        let (ok, out, err) = run(c).await;
        assert!(ok, "curl failed: {err}");
        let want = if version == "--http2" {
            "200 2"
        } else {
            "200 1.1"
        };
        assert!(out.ends_with(want), "{version}: {out}");
        assert!(out.contains("This is a mock"), "{out}");
    }
    let rec = f.m.recorded();
    assert_eq!(rec.len(), 2);
    for r in &rec {
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(
            r.header("authorization").unwrap(),
            format!("Bearer {REAL_KEY}")
        );
        assert_eq!(r.header("x-tenant"), Some("team-a"));
        if r.version == http::Version::HTTP_11 {
            assert_eq!(r.header("host"), Some("api.openai.com"));
        }
    }

    // SSE through the intercepted connection, as curl prints it.
    let mut c = curl(&f);
    c.args([
        "-N",
        "https://api.openai.com/v1/chat/completions",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    ]);
    let (ok, out, err) = run(c).await;
    assert!(ok, "{err}");
    assert!(out.matches("data: ").count() >= 10, "{out}");
    assert!(out.trim_end().ends_with("data: [DONE]"), "{out}");

    f.s.assert_metric(
        "llm_sidecar_forward_requests_total{decision=\"intercept\",kind=\"connect\",reason=\"\"}",
        3.0,
    )
    .await;
    // Same pipeline as base-URL mode: the route's request metrics count them.
    f.s.assert_metric(
        "llm_sidecar_requests_total{provider=\"openai\",route=\"openai\",status=\"200\"}",
        3.0,
    )
    .await;
    // One leaf minted for api.openai.com, then reused.
    f.s.assert_metric(
        "llm_sidecar_forward_leaf_certificates_total{cache=\"miss\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_event_by_event_through_interception() {
    use futures_util::StreamExt;
    let f = start_with(
        MockOptions {
            interval: Duration::from_millis(150),
            chunks: 4,
            ..Default::default()
        },
        "",
        "",
        "",
    )
    .await;
    let client = f.client(&f.ca_pem);
    let r = client
        .post("https://api.openai.com/v1/chat/completions")
        .bearer_auth("sk-app-dummy")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let start = Instant::now();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    let mut body = r.bytes_stream();
    while let Some(c) = body.next().await {
        arrivals.push(start.elapsed());
        text.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        arrivals.len() >= 5,
        "events must arrive separately, got {} reads",
        arrivals.len()
    );
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= Duration::from_millis(450),
        "the stream was buffered: {arrivals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_and_httpx_configured_only_by_environment() {
    let f = start_with(
        MockOptions {
            interval: Duration::from_millis(2),
            ..Default::default()
        },
        "",
        "",
        "",
    )
    .await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/clients/forward_check.py"
    );
    let mut c = Command::new("python3");
    c.arg(script)
        .env("HTTPS_PROXY", f.proxy_url())
        .env("SSL_CERT_FILE", &f.ca_pem)
        .env("OPENAI_API_KEY", "sk-app-dummy")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("REQUESTS_CA_BUNDLE");
    let (ok, out, err) = run(c).await;
    assert!(
        !err.contains("ModuleNotFoundError"),
        "pip install -r tests/integration/clients/requirements.txt\n{err}"
    );
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("FORWARD-OK"));
    // Every request reached the mock with the real key (it refuses anything else), never
    // the app's dummy.
    let rec = f.m.recorded();
    assert_eq!(rec.len(), 3);
    assert!(rec
        .iter()
        .all(|r| r.header("authorization") == Some(&format!("Bearer {REAL_KEY}"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_tunnels_tls_end_to_end() {
    // Another TLS server, with its own CA, reached as tunnel.test through the tunnel.
    let tunnel_ca = TestCa::new("tunnel test CA");
    let target = mock(MockOptions {
        tls: Some(tunnel_ca.server_config(&["tunnel.test"], &[b"http/1.1"])),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tunnel_pem = tunnel_ca.write_pem(dir.path());
    let f = start(
        "  passthrough: [tunnel.test]\n  allow_private: [tunnel.test]\n",
        &format!("    tunnel.test: \"{}\"\n", target.addr()),
        "",
    )
    .await;
    let before = f.s.metrics().await;

    // The client trusts only the tunnel target's CA: it sees the target's own
    // certificate, not one from the sidecar.
    let r = f
        .client(&tunnel_pem)
        .get("https://tunnel.test/v1/models")
        .bearer_auth("sk-app-own-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = target.recorded();
    assert_eq!(rec.len(), 1);
    // Untouched: the app's own credential, no tenant header.
    assert_eq!(
        rec[0].header("authorization"),
        Some("Bearer sk-app-own-key")
    );
    assert_eq!(rec[0].header("x-tenant"), None);

    // A client trusting only the sidecar's CA fails: nothing was intercepted.
    let e = f
        .client(&f.ca_pem)
        .get("https://tunnel.test/v1/models")
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{e:?}").to_lowercase().contains("certificate"),
        "{e:?}"
    );

    // A tunnel's bytes are counted as it closes.
    f.s.wait_metric(
        r#"llm_sidecar_forward_tunnel_bytes_total{direction="upstream"}"#,
        "> 200",
        |v| v > 200.0,
    )
    .await;
    f.s.wait_metric(
        r#"llm_sidecar_forward_tunnel_bytes_total{direction="downstream"}"#,
        "> 500",
        |v| v > 500.0,
    )
    .await;
    let after = f.s.metrics().await;
    f.s.assert_metric(
        "llm_sidecar_forward_requests_total{decision=\"passthrough\",kind=\"connect\",reason=\"\"}",
        2.0,
    )
    .await;
    // No request was parsed: the request counters did not move.
    let total = |t: &str| -> f64 {
        t.lines()
            .filter(|l| l.starts_with("llm_sidecar_requests_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(total(&before), total(&after));
    assert_eq!(f.m.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_destinations_get_403_with_a_reason() {
    let f = start(
        "  passthrough: [internal.test, \"*.github.test\"]\n",
        "    internal.test: 10.0.0.1\n",
        "",
    )
    .await;
    let addr = f.addr();
    for (target, reason) in [
        ("example.com:443", "forward_host_not_allowed"),
        ("169.254.169.254:80", "forward_blocked_address"),
        ("127.0.0.1:22", "forward_blocked_address"),
        ("[::ffff:127.0.0.1]:443", "forward_blocked_address"),
        ("[fd00:ec2::254]:443", "forward_blocked_address"),
        // on the pass-through list, but the override resolves it to a private address
        ("internal.test:443", "forward_blocked_address"),
        ("api.openai.com:8443", "forward_port_not_allowed"),
        ("x.github.test:22", "forward_port_not_allowed"),
    ] {
        let out = raw(
            addr,
            &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 403 Forbidden\r\n"),
            "{target}: {out}"
        );
        assert!(
            out.contains(&format!("x-llm-sidecar-error: {reason}\r\n")),
            "{target}: {out}"
        );
    }
    // HTTP_PROXY-style absolute-form requests follow the same rules.
    let out = raw(
        addr,
        "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
    )
    .await;
    assert!(
        out.contains("x-llm-sidecar-error: forward_blocked_address"),
        "{out}"
    );
    let out = raw(
        addr,
        "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    assert!(
        out.contains("x-llm-sidecar-error: forward_host_not_allowed"),
        "{out}"
    );
    // Port 80 is not in forward.ports (default [443]).
    let out = raw(
        addr,
        "GET http://api.openai.com/v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
    )
    .await;
    assert!(
        out.contains("x-llm-sidecar-error: forward_port_not_allowed"),
        "{out}"
    );
    // Not a proxy request at all: a clear 400.
    let out = raw(addr, "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("reverse listener"), "{out}");

    // curl reports the refusal as a failed tunnel.
    let mut c = curl(&f);
    c.arg("https://example.com/");
    let (ok, _, err) = run(c).await;
    assert!(!ok && err.contains("403"), "{err}");

    let m = f.s.metrics().await;
    let refused = |reason: &str, kind: &str| {
        metric_value(
            &m,
            &format!("llm_sidecar_forward_requests_total{{decision=\"refuse\",kind=\"{kind}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("forward_host_not_allowed", "connect"), 2.0);
    assert_eq!(refused("forward_blocked_address", "connect"), 5.0);
    assert_eq!(refused("forward_port_not_allowed", "connect"), 2.0);
    assert_eq!(refused("forward_blocked_address", "http"), 1.0);
    assert_eq!(f.m.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_users_choose_the_tenant() {
    let f = start(
        "  proxy_auth:\n    users:\n      - { user: app-b, password: pw-canary-77, tenant: team-b }\n",
        "",
        "tenants:\n  team-a: {}\n  team-b: {}\n",
    )
    .await;
    let url = "https://api.openai.com/v1/chat/completions";
    // Without credentials: 407 with a challenge.
    let out = raw(f.addr(), "CONNECT api.openai.com:443 HTTP/1.1\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 407"), "{out}");
    assert!(
        out.contains("Proxy-Authenticate: Basic realm=\"llm-sidecar\""),
        "{out}"
    );
    let mut c = curl(&f);
    c.args(["--proxy-user", "app-b:wrong", url, "-d", "{}"]);
    let (ok, _, err) = run(c).await;
    assert!(!ok && err.contains("407"), "{err}");

    let mut c = curl(&f);
    c.args([
        "--proxy-user",
        "app-b:pw-canary-77",
        url,
        "-H",
        "content-type: application/json",
        "-d",
    ])
    .arg(chat_json());
    let (ok, out, err) = run(c).await;
    assert!(ok && out.contains("This is a mock"), "{out} {err}");
    let rec = f.m.recorded();
    assert_eq!(rec[0].header("x-tenant"), Some("team-b"));
    assert_eq!(rec[0].header("proxy-authorization"), None);
    let config = f.s.get_text(&f.s.admin("/config")).await;
    assert!(!config.contains("pw-canary-77"), "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intercepted_connection_serves_only_its_host() {
    let f = start("", "", "").await;
    // A request for another host inside the tunnel: 421, and nothing goes upstream.
    let mut tls = tls_through(f.addr(), "api.openai.com", "api.openai.com", &f.ca_pem)
        .await
        .unwrap();
    tls.write_all(
        b"GET /v1/models HTTP/1.1\r\nHost: internal.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 421"), "{out}");
    assert!(
        out.contains("x-llm-sidecar-error: misdirected_request"),
        "{out}"
    );
    assert_eq!(f.m.request_count(), 0);

    // TLS for another name than the CONNECT: the handshake is refused.
    let e = tls_through(f.addr(), "api.openai.com", "evil.example", &f.ca_pem).await;
    assert!(e.is_err(), "SNI mismatch must fail the handshake");
    // A client that does not trust the CA fails its handshake; the sidecar counts it.
    let other = tempfile::tempdir().unwrap();
    let other_ca = TestCa::new("unrelated").write_pem(other.path());
    assert!(
        tls_through(f.addr(), "api.openai.com", "api.openai.com", &other_ca)
            .await
            .is_err()
    );
    f.s.wait_metric(
        "llm_sidecar_forward_tls_handshake_failures_total",
        ">= 2.0",
        |v| v >= 2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_proxy_requests_are_intercepted_when_port_80_is_allowed() {
    let f = start("  ports: [443, 80]\n", "", "").await;
    let mut c = curl(&f);
    c.args([
        "-w",
        "\n%{http_code}",
        "http://api.openai.com/v1/chat/completions",
        "http://api.openai.com/v1/chat/completions",
        "-H",
        "Authorization: Bearer sk-app-dummy",
        "-H",
        "content-type: application/json",
        "-d",
    ])
    .arg(chat_json());
    let (ok, out, err) = run(c).await;
    assert!(ok, "{err}");
    assert_eq!(out.matches("\n200").count(), 2, "{out}");
    let rec = f.m.recorded();
    assert_eq!(rec.len(), 2);
    assert_eq!(rec[0].path, "/v1/chat/completions");
    assert!(rec
        .iter()
        .all(|r| r.header("authorization") == Some(&format!("Bearer {REAL_KEY}"))));
    f.s.assert_metric(
        "llm_sidecar_forward_requests_total{decision=\"intercept\",kind=\"http\",reason=\"\"}",
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intermediate_is_name_constrained_under_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_llm-sidecar");
    let mut c = Command::new(bin);
    c.args(["ca", "init", "--dir"]).arg(dir.path()).args([
        "--domain",
        "api.openai.com",
        "--domain",
        "*.anthropic.com",
    ]);
    let (ok, out, err) = run(c).await;
    assert!(ok, "{out} {err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(ca::INTERMEDIATE_KEY))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut c = Command::new(bin);
    c.args(["ca", "print", "--dir"]).arg(dir.path());
    let (ok, printed, _) = run(c).await;
    assert!(ok);
    assert_eq!(
        printed,
        std::fs::read_to_string(dir.path().join(ca::ROOT_CERT)).unwrap()
    );

    let mut c = Command::new("openssl");
    c.args(["x509", "-noout", "-text", "-in"])
        .arg(dir.path().join(ca::INTERMEDIATE_CERT));
    let (ok, text, _) = run(c).await;
    assert!(ok);
    let nc = text
        .split("X509v3 Name Constraints: critical")
        .nth(1)
        .expect("a critical name constraint");
    assert!(
        nc.contains("DNS:api.openai.com") && nc.contains("DNS:anthropic.com"),
        "{text}"
    );
    assert!(
        nc.contains("Excluded:") && nc.contains("IP:0.0.0.0/0.0.0.0"),
        "{text}"
    );
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");

    // Leaves minted by the intermediate: inside the constraint they verify, outside
    // they fail, even though the signature is valid.
    let authority =
        ca::Authority::load(&ca::CaFiles::in_dir(dir.path()), Duration::from_secs(3600)).unwrap();
    for (name, should_verify) in [
        ("api.openai.com", true),
        ("eu.api.anthropic.com", true),
        ("evil.example.org", false),
        ("api.openai.com.evil.org", false),
    ] {
        let (leaf, _) = authority.mint(name).unwrap();
        let leaf_path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&leaf_path, to_pem(leaf.as_ref())).unwrap();
        let mut c = Command::new("openssl");
        c.arg("verify")
            .arg("-CAfile")
            .arg(dir.path().join(ca::ROOT_CERT))
            .arg("-untrusted")
            .arg(dir.path().join(ca::INTERMEDIATE_CERT))
            .arg(&leaf_path);
        let (ok, out, err) = run(c).await;
        assert_eq!(ok, should_verify, "{name}: {out} {err}");
        if !should_verify {
            assert!(
                format!("{out}{err}").contains("permitted subtree violation"),
                "{name}: {out} {err}"
            );
        }
    }
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_intermediate_is_picked_up_on_reload() {
    let f = start("", "", "").await;
    let file = f.ca_dir.path().join(ca::INTERMEDIATE_CERT);
    let before = std::fs::read_to_string(&file).unwrap();
    // Served before: a leaf (now cached) and the intermediate from the file.
    let (leaf_before, served) = served_chain(&f).await;
    assert_eq!(served.trim(), before.trim());
    init_ca(f.ca_dir.path(), &["api.openai.com"]);
    let renewed = std::fs::read_to_string(&file).unwrap();
    assert_ne!(before, renewed);
    let outcome = f.s.reload().await;
    assert!(
        matches!(outcome, llm_sidecar::config::ReloadOutcome::Applied { .. }),
        "{outcome:?}"
    );
    // The root was kept, so the same client trust still works with the new intermediate.
    let r = f
        .client(&f.ca_pem)
        .get("https://api.openai.com/v1/models")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // ...because the new intermediate signs: the chain served now is the new file, with
    // a leaf minted by it (not the one cached under the old intermediate).
    let (leaf_after, served) = served_chain(&f).await;
    assert_eq!(
        served.trim(),
        renewed.trim(),
        "the served intermediate is the new one"
    );
    assert_ne!(
        leaf_after, leaf_before,
        "a new leaf under the new intermediate"
    );
    let dir = tempfile::tempdir().unwrap();
    let leaf_path = dir.path().join("leaf.pem");
    std::fs::write(&leaf_path, &leaf_after).unwrap();
    let mut c = Command::new("openssl");
    c.arg("verify")
        .arg("-CAfile")
        .arg(f.ca_dir.path().join(ca::ROOT_CERT))
        .arg("-untrusted")
        .arg(&file)
        .arg(&leaf_path);
    let (ok, out, err) = run(c).await;
    assert!(
        ok,
        "the leaf verifies under the new intermediate: {out} {err}"
    );
}

/// The certificates the forward listener serves for api.openai.com, through a CONNECT,
/// as `openssl s_client` sees them: the leaf and the intermediate, as PEM.
async fn served_chain(f: &Fwd) -> (String, String) {
    let mut c = Command::new("openssl");
    c.args(["s_client", "-showcerts", "-proxy"])
        .arg(f.addr().to_string())
        .args([
            "-connect",
            "api.openai.com:443",
            "-servername",
            "api.openai.com",
        ])
        .stdin(Stdio::null());
    let (_, out, err) = run(c).await;
    let pems: Vec<String> = out
        .split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|rest| {
            let body = rest.split("-----END CERTIFICATE-----").next().unwrap();
            format!("-----BEGIN CERTIFICATE-----{body}-----END CERTIFICATE-----\n")
        })
        .collect();
    assert_eq!(pems.len(), 2, "leaf and intermediate: {out} {err}");
    (pems[0].clone(), pems[1].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_passthrough_reaches_the_origin_untouched() {
    let target = mock(MockOptions::default()).await;
    let port = target.addr().port();
    let f = start(
        &format!("  passthrough: [\"plain.test:{port}\"]\n  allow_private: [plain.test]\n"),
        &format!("    plain.test: \"{}\"\n", target.addr()),
        "",
    )
    .await;
    let mut c = curl(&f);
    c.args(["-w", "\n%{http_code}"])
        .arg(format!("http://plain.test:{port}/v1/models"))
        .args(["-H", "Authorization: Bearer sk-app-own-key"]);
    let (ok, out, err) = run(c).await;
    assert!(ok, "{err}");
    assert!(
        out.ends_with("\n200") && out.contains("gpt-4o-mini"),
        "{out}"
    );
    let rec = target.recorded();
    assert_eq!(rec.len(), 1);
    // Origin form, the app's own credential, no proxy headers, one request per tunnel.
    assert_eq!(rec[0].path, "/v1/models");
    assert_eq!(
        rec[0].header("authorization"),
        Some("Bearer sk-app-own-key")
    );
    assert_eq!(rec[0].header("proxy-connection"), None);
    assert_eq!(rec[0].header("connection"), Some("close"));
    f.s.assert_metric(
        "llm_sidecar_forward_requests_total{decision=\"passthrough\",kind=\"http\",reason=\"\"}",
        1.0,
    )
    .await;
}

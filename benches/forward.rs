//! HTTPS_PROXY mode cost, measured against base-URL mode in the same run.
//!
//! - a new intercepted connection: CONNECT, TLS handshake, one request, close; with the
//!   host's certificate cached (hit) and minted for a new host each time (miss); beside
//!   it a new plain base-URL connection with one request;
//! - steady state: requests/s over keep-alive connections, intercepted (TLS to the
//!   sidecar) versus base-URL (plain HTTP to the sidecar), same provider behind both.
//!
//! Everything runs in this process on 127.0.0.1: the mock provider (plain HTTP, so the
//! upstream leg is the same in both modes), the sidecar and the clients.
//!
//! `cargo bench --bench forward` (release build; takes about 30 s)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use llm_sidecar::config::{self, ConfigStore};
use llm_sidecar::forward::ca;
use llm_sidecar::mock::{self, MockOptions};
use llm_sidecar::observability::metrics::Metrics;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNS: usize = 16;
const STEADY: Duration = Duration::from_secs(5);
const NEW_CONNS: usize = 400;

fn tls_client(root: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&std::fs::read(root).unwrap()) {
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
    // Each new connection does a full handshake, as a fresh app process would.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One GET with keep-alive; reads the whole response (Content-Length framed).
async fn get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, host: &str, buf: &mut Vec<u8>) {
    let req = format!("GET /v1/models HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])
                .unwrap()
                .to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("content-length");
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            return;
        }
    }
}

async fn connect_tunnel(proxy: SocketAddr, host: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    s
}

async fn intercepted(
    proxy: SocketAddr,
    host: &str,
    tls: &tokio_rustls::TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let s = connect_tunnel(proxy, host).await;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    tls.connect(name, s).await.unwrap()
}

struct Stats(Vec<Duration>);

impl Stats {
    fn line(&mut self, what: &str) -> f64 {
        self.0.sort();
        let n = self.0.len();
        let mean = self.0.iter().sum::<Duration>() / n as u32;
        let p = |q: f64| self.0[((n as f64 * q) as usize).min(n - 1)];
        println!(
            "{what:<44} mean {:>8.1} µs   p50 {:>8.1} µs   p99 {:>8.1} µs   ({n} connections)",
            mean.as_secs_f64() * 1e6,
            p(0.5).as_secs_f64() * 1e6,
            p(0.99).as_secs_f64() * 1e6
        );
        mean.as_secs_f64()
    }
}

async fn steady<F, Fut, S>(what: &str, open: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = Instant::now() + STEADY;
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        let mut s = open().await;
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            let mut n = 0u64;
            while Instant::now() < deadline {
                get(&mut s, "api.bench.test", &mut buf).await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let rps = total as f64 / STEADY.as_secs_f64();
    println!(
        "{what:<44} {rps:>10.0} req/s   ({CONNS} keep-alive connections, {}s)",
        STEADY.as_secs()
    );
    rps
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let m = mock::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca::init_dir(&ca_dir, &["bench.test"]).unwrap();
    let yaml = format!(
        r#"version: 1
listeners: {{ reverse: "127.0.0.1:0", admin: "127.0.0.1:0", forward: "127.0.0.1:0" }}
log: {{ level: warn }}
forward:
  ca: {{ dir: {ca} }}
providers:
  mock:
    kind: openai
    base_url: {url}/v1
    auth: {{ type: bearer, token: sk-bench }}
routes:
  - {{ name: intercepted, match: {{ host: "*.bench.test" }}, provider: mock, keep_path: true }}
  - {{ name: base-url, match: {{ path_prefix: /v1 }}, provider: mock, keep_path: true }}
"#,
        ca = ca_dir.display(),
        url = m.url()
    );
    let path = dir.path().join("sidecar.yaml");
    std::fs::write(&path, yaml).unwrap();
    let store = ConfigStore::open(&path, config::process_env(), Metrics::new()).unwrap();
    let sidecar = llm_sidecar::build_server(store, llm_sidecar::Options::default())
        .await
        .unwrap();
    let proxy = sidecar.forward_addr().unwrap();
    let reverse = sidecar.reverse_addr();
    let tls = tls_client(&ca_dir.join(ca::ROOT_CERT));
    let mut buf = Vec::new();

    println!("llm-sidecar HTTPS_PROXY benchmark (in-process, 2 worker threads, 127.0.0.1)\n");

    // Leaf minting alone.
    let authority =
        ca::Authority::load(&ca::CaFiles::in_dir(&ca_dir), Duration::from_secs(86400)).unwrap();
    let t = Instant::now();
    for i in 0..200 {
        authority.mint(&format!("m{i}.bench.test")).unwrap();
    }
    println!(
        "{:<44} mean {:>8.1} µs   (P-256 key + signature)\n",
        "mint a leaf certificate",
        t.elapsed().as_secs_f64() * 1e6 / 200.0
    );

    // New connections, one request each.
    let _ = intercepted(proxy, "warm.bench.test", &tls).await;
    let mut base = Stats(Vec::new());
    let mut hit = Stats(Vec::new());
    let mut miss = Stats(Vec::new());
    for i in 0..NEW_CONNS {
        let t = Instant::now();
        let mut s = TcpStream::connect(reverse).await.unwrap();
        s.set_nodelay(true).unwrap();
        get(&mut s, "127.0.0.1", &mut buf).await;
        base.0.push(t.elapsed());

        let t = Instant::now();
        let mut s = intercepted(proxy, "api.bench.test", &tls).await;
        get(&mut s, "api.bench.test", &mut buf).await;
        hit.0.push(t.elapsed());

        let host = format!("h{i}.bench.test");
        let t = Instant::now();
        let mut s = intercepted(proxy, &host, &tls).await;
        get(&mut s, &host, &mut buf).await;
        miss.0.push(t.elapsed());
    }
    let b = base.line("new base-URL connection + 1 request");
    let h = hit.line("new intercepted connection, cert cached");
    let x = miss.line("new intercepted connection, cert minted");
    println!(
        "  interception adds {:.0} µs per new connection (cached), {:.0} µs (minted)\n",
        (h - b) * 1e6,
        (x - b) * 1e6
    );

    // Steady state over keep-alive connections.
    let base_rps = steady("base-URL mode, keep-alive", || async {
        let s = TcpStream::connect(reverse).await.unwrap();
        s.set_nodelay(true).unwrap();
        s
    })
    .await;
    let tls2 = tls.clone();
    let icp_rps = steady("intercepted (TLS to the sidecar), keep-alive", || {
        let tls = tls2.clone();
        async move { intercepted(proxy, "api.bench.test", &tls).await }
    })
    .await;
    println!("  intercepted / base-URL: {:.2}x", icp_rps / base_rps);
    sidecar.shutdown_with_grace(Duration::from_secs(1)).await;
}

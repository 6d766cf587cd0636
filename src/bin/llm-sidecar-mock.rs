//! `llm-sidecar-mock`: an OpenAI- and Anthropic-compatible mock provider.
//! See `llm_sidecar::mock` for the per-request `x-mock-*` headers.

/// mimalloc: fewer cycles per allocation than glibc's malloc on the request path
/// (measured with benches/load.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use llm_sidecar::config::units::parse_duration;
use llm_sidecar::mock::{self, MockOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "llm-sidecar-mock",
    version,
    about = "A mock OpenAI/Anthropic provider for tests, demos and benchmarks"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Wait this long before the response headers (e.g. 200ms).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    latency: std::time::Duration,
    /// Content tokens per response (SSE events).
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Pause between SSE events.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    interval: std::time::Duration,
    /// Require this API key (Bearer, x-api-key or api-key); others get 401.
    #[arg(long, env = "MOCK_REQUIRE_KEY")]
    require_key: Option<String>,
    /// Fail every Nth request with --fail-status.
    #[arg(long)]
    fail_every: Option<u64>,
    /// Status used by --fail-every.
    #[arg(long, default_value_t = 500)]
    fail_status: u16,
    /// Keep the last N requests, served at GET /_mock/requests.
    #[arg(long, default_value_t = 0)]
    record: usize,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn tls_config(cert: &PathBuf, key: &PathBuf) -> Result<rustls::ServerConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => match tls_config(c, k) {
            Ok(cfg) => Some(Arc::new(cfg)),
            Err(e) => {
                eprintln!("llm-sidecar-mock: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let opts = MockOptions {
        listen: args.listen,
        latency: args.latency,
        chunks: args.chunks,
        interval: args.interval,
        require_key: args.require_key,
        fail_every: args.fail_every,
        fail_status: args.fail_status,
        record: args.record,
        tls,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llm-sidecar-mock: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let server = match mock::start(opts).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("llm-sidecar-mock: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        eprintln!("llm-sidecar-mock listening on {}", server.url());
        let _ = tokio::signal::ctrl_c().await;
        ExitCode::SUCCESS
    })
}

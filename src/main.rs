//! `llm-sidecar`: run the sidecar, or check a config file.

/// mimalloc: a million mixed requests take 83 s against glibc's 113 s, and its RSS stays
/// within 4% where glibc's creeps 20% (tests/soak.sh). It costs memory per open stream;
/// BENCHMARKS.md ("Reading the numbers") has the trade-off and the knob
/// (`MIMALLOC_ARENA_EAGER_COMMIT=0`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use llm_sidecar::config::{self, ConfigStore};
use llm_sidecar::forward::ca;
use llm_sidecar::observability::{self, metrics::Metrics};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "llm-sidecar",
    version,
    about = "A sidecar proxy for LLM provider traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file [env: LLM_SIDECAR_CONFIG] [default: conf/sidecar.yaml]
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (the default command).
    Run,
    /// Validate a config file: print every error with its path; exit 1 if there are any.
    Check {
        /// Check the structure and the references only: resolve no `${env:...}` or
        /// `${file:...}` and read no file the config names (CA, trust bundles, credential
        /// files), as a CI job without the secrets must.
        #[arg(long)]
        no_secrets: bool,
    },
    /// The local CA for HTTPS_PROXY interception.
    #[command(subcommand)]
    Ca(CaCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the config file's JSON Schema (for editors and CI checks).
    Schema,
    /// Wait until the sidecar answers 200 on its admin /readyz; exit 1 after --timeout.
    /// For the classic (non-native) Kubernetes sidecar pattern's postStart hook, which
    /// holds the app container back until the sidecar is ready.
    WaitReady {
        /// The readiness URL [default: /readyz on the config's listeners.admin, with an
        /// unspecified address (0.0.0.0, ::) replaced by loopback]
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value = "60s")]
        timeout: humantime::Duration,
    },
    /// Sleep, then exit 0. For a preStop hook in images with no shell: it keeps the
    /// sidecar serving while the app drains (the classic sidecar pattern).
    Sleep { duration: humantime::Duration },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit log's hash chain; exit 1 at the first edited, inserted or removed
    /// record, naming its line. Give rotated files oldest first to check them joined:
    /// `audit verify audit.jsonl.2 audit.jsonl.1 audit.jsonl`.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a root CA and a signing intermediate, name-constrained to the intercepted
    /// domains. An existing root in DIR is kept (apps need not trust anything new).
    Init {
        /// Where to write ca.pem, root.key, intermediate.pem and intermediate.key
        /// [default: the config's forward.ca.dir]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A domain the intermediate may sign for (repeatable; `*.example.com` allowed)
        /// [default: every host the config's routes match]
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// How long the intermediate is valid
        #[arg(long, default_value = "365d")]
        validity: humantime::Duration,
        /// Replace the root too (apps must then trust the new ca.pem)
        #[arg(long)]
        new_root: bool,
        /// Do nothing if the config's CA files already exist, or if the config has no
        /// forward.ca (for setup scripts)
        #[arg(long, conflicts_with = "new_root")]
        if_missing: bool,
    },
    /// Print the root certificate (PEM) that apps must trust.
    Print {
        /// The CA directory [default: the config's forward.ca]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print a trust bundle instead: Mozilla's public roots (the ones the sidecar
        /// itself trusts) followed by this root. For SSL_CERT_FILE / REQUESTS_CA_BUNDLE,
        /// which replace a runtime's default trust store.
        #[arg(long)]
        bundle: bool,
        /// Write to this file (atomically, mode 0644) instead of stdout
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("LLM_SIDECAR_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = config_path(&cli);
    match cli.command.unwrap_or(Command::Run) {
        Command::Check { no_secrets } => check(&path, no_secrets),
        Command::Run => run(&path),
        Command::Ca(c) => ca(&path, c),
        Command::Audit(AuditCommand::Verify { files }) => audit_verify(&files),
        Command::Schema => {
            let schema = config::schema::json_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::WaitReady { url, timeout } => wait_ready(&path, url, timeout.into()),
        Command::Sleep { duration } => {
            std::thread::sleep(duration.into());
            ExitCode::SUCCESS
        }
    }
}

fn audit_verify(files: &[PathBuf]) -> ExitCode {
    use llm_sidecar::observability::audit;
    match audit::verify(files) {
        Ok(v) if v.records == 0 => {
            println!("no records");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            let start = if v.starts_after == audit::GENESIS {
                "from the first record".to_string()
            } else {
                format!("continuing a chain at hash {}", &v.starts_after[..16])
            };
            println!(
                "ok: {} records, seq {}..{}, {start}",
                v.records, v.first_seq, v.last_seq
            );
            ExitCode::SUCCESS
        }
        Err(b) => {
            eprintln!("llm-sidecar audit verify: {b}");
            ExitCode::FAILURE
        }
    }
}

/// The config file's schema (not compiled: the CA it names may not exist yet).
fn read_schema(path: &std::path::Path) -> Result<config::schema::ConfigFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    config::parse::parse(&text).map_err(|errs| format!("{}: {errs}", path.display()))
}

fn ca_files(path: &std::path::Path, dir: Option<PathBuf>) -> Result<ca::CaFiles, String> {
    if let Some(d) = dir {
        return Ok(ca::CaFiles::in_dir(&d));
    }
    let file = read_schema(path)?;
    let c = file
        .forward
        .ca
        .ok_or_else(|| format!("{} has no forward.ca; pass --dir DIR", path.display()))?;
    ca::CaFiles::from_config(&c).ok_or_else(|| "forward.ca is incomplete; pass --dir DIR".into())
}

fn ca(path: &std::path::Path, cmd: CaCommand) -> ExitCode {
    let result = match cmd {
        CaCommand::Init {
            dir,
            domains,
            validity,
            new_root,
            if_missing,
        } => {
            if if_missing {
                let files = match &dir {
                    Some(d) => Ok(ca::CaFiles::in_dir(d)),
                    None => ca_files(path, None),
                };
                match files {
                    Ok(f) if f.exist() => {
                        let at = dir
                            .as_ref()
                            .map_or_else(|| f.cert.display(), |d| d.display());
                        println!("the CA in {at} exists; nothing to do");
                        return ExitCode::SUCCESS;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        println!("{} has no forward.ca; nothing to do", path.display());
                        return ExitCode::SUCCESS;
                    }
                }
            }
            ca_init(path, dir, domains, validity.into(), new_root)
        }
        CaCommand::Print { dir, bundle, out } => ca_files(path, dir).and_then(|f| {
            let pem = std::fs::read_to_string(&f.root)
                .map_err(|e| format!("cannot read {}: {}", f.root.display(), e.kind()))?;
            let text = if bundle { ca::trust_bundle(&pem) } else { pem };
            match out {
                Some(out) => ca::write_public(&out, text.as_bytes())
                    .map_err(|e| format!("cannot write {}: {e}", out.display())),
                None => {
                    print!("{text}");
                    Ok(())
                }
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-sidecar ca: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ca_init(
    path: &std::path::Path,
    dir: Option<PathBuf>,
    mut domains: Vec<String>,
    validity: std::time::Duration,
    new_root: bool,
) -> Result<(), String> {
    let dir = match dir {
        Some(d) => d,
        None => {
            let file = read_schema(path)?;
            file.forward.ca.and_then(|c| c.dir).ok_or_else(|| {
                format!("{} has no forward.ca.dir; pass --dir DIR", path.display())
            })?
        }
    };
    if domains.is_empty() {
        domains = config::compile::intercepted_domains(&read_schema(path)?);
        if domains.is_empty() {
            return Err(format!(
                "no routes in {} match a host; pass --domain (e.g. --domain api.openai.com)",
                path.display()
            ));
        }
    }
    let report = ca::init(&ca::InitOptions {
        dir: &dir,
        domains: &domains,
        intermediate_validity: validity,
        new_root,
    })
    .map_err(|e| e.to_string())?;
    if report.reused_root {
        println!(
            "kept the root CA {} (apps that trust it need no change)",
            report.root.display()
        );
    } else {
        println!("created the root CA {}", report.root.display());
    }
    println!(
        "issued a new intermediate for: {}",
        report.permitted.join(", ")
    );
    println!(
        "apps must trust {}; keep {} offline once you are done issuing",
        report.root.display(),
        dir.join(ca::ROOT_KEY).display()
    );
    Ok(())
}

/// Polls a readiness URL (plain HTTP on loopback) until it answers 200.
fn wait_ready(
    path: &std::path::Path,
    url: Option<String>,
    timeout: std::time::Duration,
) -> ExitCode {
    let url = match url {
        Some(u) => u,
        None => match read_schema(path) {
            Ok(f) => {
                let admin = match f.listeners.admin.parse::<std::net::SocketAddr>() {
                    Ok(mut a) if a.ip().is_unspecified() => {
                        a.set_ip(if a.is_ipv4() {
                            std::net::Ipv4Addr::LOCALHOST.into()
                        } else {
                            std::net::Ipv6Addr::LOCALHOST.into()
                        });
                        a.to_string()
                    }
                    _ => f.listeners.admin,
                };
                format!("http://{admin}/readyz")
            }
            Err(e) => {
                eprintln!("llm-sidecar wait-ready: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match llm_sidecar::admin::wait_ready(&url, timeout) {
        Ok(()) => {
            println!("{url}: ready");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("llm-sidecar wait-ready: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open(path: &std::path::Path) -> Result<std::sync::Arc<ConfigStore>, ExitCode> {
    ConfigStore::open(path, config::process_env(), Metrics::new()).map_err(|errs| {
        eprintln!("{}: {} error(s):", path.display(), errs.len());
        for e in errs.iter() {
            eprintln!("  {e}");
        }
        ExitCode::FAILURE
    })
}

fn check(path: &std::path::Path, no_secrets: bool) -> ExitCode {
    let mode = if no_secrets {
        config::LoadMode::Structure
    } else {
        config::LoadMode::Check
    };
    let snap = match config::check_file(path, config::process_env(), mode) {
        Ok(s) => s,
        Err(errs) => {
            eprintln!("{}: {} error(s):", path.display(), errs.len());
            for e in errs.iter() {
                eprintln!("  {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    for w in &snap.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{}: OK{} ({} routes, {} providers, hash {})",
        path.display(),
        if no_secrets {
            ", structure and references"
        } else {
            ""
        },
        snap.routes.len(),
        snap.providers.len(),
        snap.hash
    );
    ExitCode::SUCCESS
}

/// `forward.ca.create_if_missing`: the first `run` creates the interception CA, as
/// `ca init` would (mitmproxy does the same). Anything short of a clean case (no forward
/// listener, half a CA, no host to constrain it to) is left to the load to report.
fn create_missing_ca(path: &std::path::Path) -> Result<(), String> {
    let Ok(file) = read_schema(path) else {
        return Ok(());
    };
    let (Some(_), Some(c)) = (&file.listeners.forward, &file.forward.ca) else {
        return Ok(());
    };
    let ca::Missing::Create(dir) = ca::Missing::of(c) else {
        return Ok(());
    };
    let domains = config::compile::intercepted_domains(&file);
    if domains.is_empty() {
        return Ok(());
    }
    let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
    let report = ca::init_dir(&dir, &domains).map_err(|e| {
        format!(
            "forward.ca: cannot create the CA in {} ({e}); create it with `llm-sidecar ca init`, or set forward.ca.create_if_missing: false",
            dir.display()
        )
    })?;
    eprintln!(
        "llm-sidecar: created the interception CA in {} for {} (forward.ca.create_if_missing); apps must trust {}",
        dir.display(),
        report.permitted.join(", "),
        report.root.display()
    );
    Ok(())
}

fn run(path: &std::path::Path) -> ExitCode {
    if let Err(e) = create_missing_ca(path) {
        eprintln!("llm-sidecar: {e}");
        return ExitCode::FAILURE;
    }
    let store = match open(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let startup = store.applied_startup().clone();
    observability::init_logging(&startup.log_level, startup.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(startup.threads)
        .thread_name("llm-sidecar")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let opts = llm_sidecar::Options {
            handle_signals: true,
            ..Default::default()
        };
        match llm_sidecar::build_server(store, opts).await {
            Ok(sidecar) => {
                let report = sidecar.run_until_signal().await;
                if report.drained {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(3)
                }
            }
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("llm-sidecar: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

//! Every file shipped in `conf/` is a valid config (River's golden tests).

use llm_sidecar::config::{ConfigStore, EnvSource};
use llm_sidecar::forward::ca;
use llm_sidecar::observability::metrics::Metrics;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// A copy of a shipped config whose forward CA (`.llm-sidecar/ca`, relative to the
/// working directory) points at a fresh CA in a temp dir, as `ca init` would make it.
fn prepared(f: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(f).unwrap();
    let ca_dir = dir.path().join("ca");
    if text.contains(".llm-sidecar/ca") {
        let file = llm_sidecar::config::parse::parse(&text).unwrap();
        let domains = llm_sidecar::config::compile::intercepted_domains(&file);
        let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
        llm_sidecar::forward::ca::init_dir(&ca_dir, &domains).unwrap();
    }
    let copy = dir.path().join(f.file_name().unwrap());
    std::fs::write(
        &copy,
        text.replace(".llm-sidecar/ca", ca_dir.to_str().unwrap()),
    )
    .unwrap();
    (dir, copy)
}

fn shipped_configs() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut files = Vec::new();
    for dir in [root.clone(), root.join("examples")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_shipped_config_validates_with_all_secrets_present() {
    let files = shipped_configs();
    assert!(
        files.len() >= 5,
        "conf/sidecar.yaml and the examples: {files:?}"
    );
    let env: EnvSource = Arc::new(|name: &str| Some(format!("test-value-for-{name}-long-enough")));
    for f in &files {
        let (_dir, copy) = prepared(f);
        match ConfigStore::open(&copy, env.clone(), Metrics::new()) {
            Ok(store) => {
                let snap = store.load();
                assert!(!snap.routes.is_empty(), "{}: no routes", f.display());
                for w in &snap.warnings {
                    assert!(!w.contains("no route uses"), "{}: {w}", f.display());
                    // `ca init` from the config covers every intercepted host.
                    assert!(!w.contains("forward.ca"), "{}: {w}", f.display());
                }
            }
            Err(e) => panic!("{} is invalid:\n{e}", f.display()),
        }
    }
}

#[test]
fn the_default_config_runs_with_no_keys_at_all() {
    // A fresh machine has no provider keys: the shipped default must still start, with
    // those providers disabled.
    let env: EnvSource = Arc::new(|_: &str| None);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf/sidecar.yaml");
    let (_dir, copy) = prepared(&path);
    let store = ConfigStore::open(&copy, env, Metrics::new()).unwrap_or_else(|e| panic!("{e}"));
    let snap = store.load();
    assert!(snap.routes.len() >= 14);
    // HTTPS_PROXY mode is on, intercepting the providers' hosts.
    assert!(store.applied_startup().forward.is_some());
    assert_eq!(
        snap.forward.decide("api.openai.com", 443),
        Ok(llm_sidecar::forward::Decision::Intercept)
    );
}

#[test]
fn check_command_accepts_shipped_files_and_reports_every_error() {
    let bin = env!("CARGO_BIN_EXE_llm-sidecar");
    for f in shipped_configs() {
        let text = std::fs::read_to_string(&f).unwrap();
        let (_dir, copy) = prepared(&f);
        let mut cmd = Command::new(bin);
        cmd.arg("check")
            .arg("-c")
            .arg(&copy)
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        // Give every referenced variable a dummy value, as a deployment would.
        for name in text
            .split("${env:")
            .skip(1)
            .filter_map(|r| r.split_once('}'))
            .map(|(n, _)| n)
        {
            cmd.env(name, format!("dummy-value-for-{name}"));
        }
        if text.contains("aws_sigv4") {
            cmd.env("AWS_ACCESS_KEY_ID", "AKIADUMMY")
                .env("AWS_SECRET_ACCESS_KEY", "dummy");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": OK ("));
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\nproviders:\n  openai: { kind: openai, base_url: https://api.openai.com }\nroutes:\n  - { match: { path_prefix: /a }, provider: openai }\n  - { match: { path_prefix: /b }, provider: openai, name: b }\n  - { match: { path_prefix: /c }, provider: opnai }\n  - { match: { path_prefix: d }, provider: openai, name: d }\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[2].provider: unknown provider \"opnai\""),
        "{err}"
    );
    assert!(err.contains("routes[3].match.path_prefix"), "{err}");
    assert!(err.contains("2 error(s)"), "{err}");

    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("llm-sidecar "));
    // LLM_SIDECAR_CONFIG names the file when -c is absent.
    let out = Command::new(bin)
        .arg("check")
        .env("LLM_SIDECAR_CONFIG", &bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// The default config on loopback port 0, logging JSON, with its CA directory in `dir`.
fn default_config_in(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf/sidecar.yaml"),
    )
    .unwrap();
    for needle in [
        "reverse: 127.0.0.1:8080",
        "admin: 127.0.0.1:9901",
        "forward: 127.0.0.1:3128",
        "format: text",
        "dir: .llm-sidecar/ca",
    ] {
        assert!(text.contains(needle), "conf/sidecar.yaml changed: {needle}");
    }
    let text = text
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("127.0.0.1:3128", "127.0.0.1:0")
        .replace("format: text", "format: json")
        .replace(".llm-sidecar/ca", dir.join("ca").to_str().unwrap());
    let path = dir.join("sidecar.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// What a new user does first, in a fresh checkout (no CA yet, no keys): `check`
/// passes and says `run` creates the CA; `run` creates it and serves.
#[test]
fn a_fresh_checkout_checks_then_runs_the_default_config_creating_its_ca() {
    use crate::support::process::{signal, spawn_binary, wait_exit};
    let bin = env!("CARGO_BIN_EXE_llm-sidecar");
    // As shipped, from a working directory with no .llm-sidecar/ in it.
    let fresh = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args(["check", "-c"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf/sidecar.yaml"))
        .current_dir(fresh.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("creates it on its first start"),
        "check says the CA comes with the first run: {err}"
    );
    assert!(
        !fresh.path().join(".llm-sidecar").exists(),
        "check writes nothing"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = default_config_in(dir.path());
    let ca_dir = dir.path().join("ca");
    // The first run: its stderr up to the "listening" line.
    let mut child = crate::support::process::ChildGuard(
        Command::new(bin)
            .args(["run", "-c"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut early = Vec::new();
    let mut admin = String::new();
    {
        use std::io::BufRead;
        let stderr = child.0.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok);
        for line in lines.by_ref().take(200) {
            if line.contains("llm-sidecar listening") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                admin = v["admin"].as_str().unwrap().to_string();
                break;
            }
            early.push(line);
        }
        // keep draining, so the pipe never fills
        std::thread::spawn(move || lines.for_each(drop));
    }
    assert!(!admin.is_empty(), "the sidecar did not start: {early:?}");
    assert!(
        early
            .iter()
            .any(|l| l.contains("created the interception CA")),
        "the first run says what it created: {early:?}"
    );
    wait_ready(bin, &admin);
    for f in [
        ca::ROOT_CERT,
        ca::INTERMEDIATE_CERT,
        ca::INTERMEDIATE_KEY,
        ca::ROOT_KEY,
    ] {
        assert!(ca_dir.join(f).exists(), "{f} created");
    }
    let root = std::fs::read(ca_dir.join(ca::ROOT_CERT)).unwrap();
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, std::time::Duration::from_secs(20)).is_some_and(|s| s.success()));

    // The second run keeps the CA apps now trust.
    let (mut child, _, admin, _rx) = spawn_binary(&config);
    wait_ready(bin, &admin);
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, std::time::Duration::from_secs(20)).is_some());
    assert_eq!(std::fs::read(ca_dir.join(ca::ROOT_CERT)).unwrap(), root);
}

#[test]
fn run_creates_no_ca_when_told_not_to_or_when_half_of_one_is_there() {
    let bin = env!("CARGO_BIN_EXE_llm-sidecar");
    let run = |config: &Path| {
        let out = Command::new(bin)
            .args(["run", "-c"])
            .arg(config)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // opted out: start-up fails, naming the file
    let dir = tempfile::tempdir().unwrap();
    let config = default_config_in(dir.path());
    let text = std::fs::read_to_string(&config).unwrap();
    let ca_line = format!("dir: {}", dir.path().join("ca").display());
    std::fs::write(
        &config,
        text.replace(&ca_line, &format!("{ca_line}, create_if_missing: false")),
    )
    .unwrap();
    let (ok, err) = run(&config);
    assert!(!ok, "{err}");
    assert!(
        err.contains("forward.ca") && err.contains("cannot read"),
        "{err}"
    );
    assert!(!dir.path().join("ca").exists());
    // check agrees: no CA, none to come
    let out = Command::new(bin)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());

    // half a CA (the root alone) is never overwritten
    let dir = tempfile::tempdir().unwrap();
    let config = default_config_in(dir.path());
    std::fs::create_dir_all(dir.path().join("ca")).unwrap();
    std::fs::write(
        dir.path().join("ca").join(ca::ROOT_CERT),
        "an existing root\n",
    )
    .unwrap();
    let (ok, err) = run(&config);
    assert!(!ok, "{err}");
    assert!(err.contains("forward.ca"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca").join(ca::ROOT_CERT)).unwrap(),
        "an existing root\n"
    );
    assert!(!dir.path().join("ca").join(ca::INTERMEDIATE_KEY).exists());
}

/// `check --no-secrets`: what a platform team's CI can run with none of the secrets,
/// files or generated CA. Every shipped example passes; real mistakes still fail; no
/// value is read, so none can be printed.
#[test]
fn check_without_secrets_validates_structure_and_references() {
    let bin = env!("CARGO_BIN_EXE_llm-sidecar");
    let cwd = tempfile::tempdir().unwrap();
    let check = |config: &Path, envs: &[(&str, &str)]| {
        let mut c = Command::new(bin);
        c.args(["check", "--no-secrets", "-c"])
            .arg(config)
            .current_dir(cwd.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    for f in shipped_configs() {
        let (ok, out, err) = check(&f, &[]);
        assert!(ok, "{}: {err}", f.display());
        assert!(out.contains(": OK, structure and references ("), "{out}");
        assert!(
            !err.contains("is not set"),
            "{}: nothing is resolved: {err}",
            f.display()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("never-read.key");
    std::fs::write(&key_file, "file-canary-secret-1234").unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            r#"version: 1
providers:
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
    auth: {{ type: bearer, token: "${{file:{}}}" }}
    tls: {{ ca_file: /nonexistent/corp-ca.pem }}
  azure:
    kind: azure_openai
    base_url: "https://${{env:AZURE_RESOURCE}}.openai.azure.com:notaport/openai"
    auth: {{ type: header, name: api-key, value: "${{env:AZURE_KEY}}" }}
routes:
  - {{ match: {{ path_prefix: /a }}, provider: openai }}
  - {{ match: {{ path_prefix: /b }}, provider: opnai }}
  - {{ match: {{ path_prefix: /c }}, provider: azure }}
"#,
            key_file.display()
        ),
    )
    .unwrap();
    let (ok, _, err) = check(&bad, &[("AZURE_KEY", "env-canary-secret-5678")]);
    assert!(!ok);
    assert!(
        err.contains("routes[1].provider: unknown provider \"opnai\""),
        "{err}"
    );
    assert!(err.contains("did you mean \"openai\"?"), "{err}");
    assert!(
        err.contains("providers.azure.base_url"),
        "the URL around the reference: {err}"
    );
    assert!(!err.contains("corp-ca.pem"), "files are not read: {err}");
    assert!(err.contains("2 error(s)"), "{err}");
    assert!(!err.contains("canary"), "{err}");
}

/// `llm-sidecar wait-ready` against a running sidecar's admin address must succeed.
fn wait_ready(bin: &str, admin: &str) {
    let ready = Command::new(bin)
        .args(["wait-ready", "--timeout", "20s", "--url"])
        .arg(format!("http://{admin}/readyz"))
        .output()
        .unwrap();
    assert!(ready.status.success());
}

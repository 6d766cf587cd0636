//! Every file shipped in `conf/` is a valid config (River's golden tests).

use llm_sidecar::config::{ConfigStore, EnvSource};
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

//! The real `llm-sidecar` binary as a child process.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child if the test fails before it exits by itself.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A config file for [`spawn_binary`]: `yaml` with port-0 listeners and the JSON log
/// the binary's addresses are read from. Keep the directory for the test's length.
pub fn binary_config(yaml: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.yaml");
    std::fs::write(
        &path,
        super::with_listeners(&format!("log: {{ format: json }}\n{yaml}")),
    )
    .unwrap();
    (dir, path)
}

/// Runs the real binary; returns it and its reverse/admin addresses (read from its JSON
/// log line "llm-sidecar listening").
pub fn spawn_binary(
    config: &std::path::Path,
) -> (
    ChildGuard,
    String,
    String,
    std::sync::mpsc::Receiver<String>,
) {
    let child = Command::new(env!("CARGO_BIN_EXE_llm-sidecar"))
        .args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stderr = child.0.stderr.take().unwrap();
    let (reverse, admin, rx) = read_listening(stderr);
    (child, reverse, admin, rx)
}

/// The reverse and admin addresses from a starting sidecar's JSON log; the rest of its
/// log keeps being read (so the pipe never fills) and is dropped.
pub fn listening_addrs(stderr: std::process::ChildStderr) -> (String, String) {
    let (reverse, admin, _rx) = read_listening(stderr);
    (reverse, admin)
}

fn read_listening(
    stderr: std::process::ChildStderr,
) -> (String, String, std::sync::mpsc::Receiver<String>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            // a receiver that went away still lets the reading go on
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("sidecar did not start");
        if line.contains("llm-sidecar listening") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            return (
                v["reverse"].as_str().unwrap().to_string(),
                v["admin"].as_str().unwrap().to_string(),
                rx,
            );
        }
    }
}

pub fn signal(child: &ChildGuard, sig: i32) {
    // SAFETY: kill(2) with a pid we own; no memory is involved.
    unsafe {
        libc::kill(child.0.id() as i32, sig);
    }
}

pub fn wait_exit(child: &mut ChildGuard, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.0.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

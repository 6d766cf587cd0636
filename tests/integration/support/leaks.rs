//! Log capture and the canary check every auth test ends with.

use super::TestSidecar;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

static CAPTURE: OnceLock<Capture> = OnceLock::new();

/// Installs the sidecar's own log setup at TRACE, writing into memory, once per process
/// (nextest runs each test in its own process).
pub fn capture_logs() -> &'static Capture {
    CAPTURE.get_or_init(|| {
        let c = Capture::default();
        llm_sidecar::observability::init_logging_to(
            "trace",
            llm_sidecar::config::schema::LogFormat::Json,
            c.clone(),
            false,
        );
        c
    })
}

/// None of `secrets` appears in `/config`, `/metrics` or any log line so far.
pub async fn assert_no_leak(s: &TestSidecar, secrets: &[&str]) {
    let config = s.get_text(&s.admin("/config")).await;
    let metrics = s.metrics().await;
    let logs = capture_logs().text();
    assert!(
        logs.contains("llm-sidecar listening"),
        "the log capture is live"
    );
    for (name, text) in [
        ("/config", &config),
        ("/metrics", &metrics),
        ("logs", &logs),
    ] {
        for secret in secrets {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(secret))
                .take(3)
                .collect();
            assert!(
                lines.is_empty(),
                "{name} leaks a secret:\n{}",
                lines.join("\n")
            );
        }
    }
}

//! The audit log: what a record says, that canaries never reach it or the logs, that
//! `audit verify` catches tampering, and that a stuck sink never holds up a request.

use crate::support::process::ChildGuard;
use crate::support::*;
use llm_sidecar::mock::MockOptions;
use llm_sidecar::observability::audit;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const CLIENT_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const PROVIDER_SECRET: &str = "prov-canary-9f8e7d6c5b4a";
const APP_KEY: &str = "sk-appcanary0123456789abcdef";
const EMAIL: &str = "canary.person@example.org";
const MOBILE: &str = "13912345678";
const CN_ID: &str = "11010519491231002X";
const CARD: &str = "4111 1111 1111 1111";
const USER: &str = "canary-user-3141";

fn canaries() -> [&'static str; 7] {
    [PROVIDER_SECRET, APP_KEY, EMAIL, MOBILE, CN_ID, CARD, USER]
}

fn pii_body(stream: bool) -> Value {
    let text = format!(
        "my key is {APP_KEY}, the provider's is {PROVIDER_SECRET}; mail {EMAIL}, call {MOBILE}, id {CN_ID}, card {CARD}"
    );
    let mut b = json!({
        "model": "gpt-4o-mini",
        "user": USER,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    });
    if stream {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

fn config(dir: &Path, mock: &str) -> String {
    let key = dir.join("provider-key");
    std::fs::write(&key, PROVIDER_SECRET).unwrap();
    format!(
        r#"tenant: {{ id: team-a }}
audit:
  output: file
  path: {audit}
  redact:
    json_paths:
      - {{ path: "$.user" }}
limits:
  rules:
    - {{ name: tiny, scope: [tenant], requests: {{ rate: 3/m, burst: 3 }} }}
providers:
  mock:
    kind: openai
    base_url: {mock}/v1
    auth: {{ type: bearer, token: "${{file:{key}}}" }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: mock
    audit_bodies: {{ max_bytes: 64KiB }}
"#,
        audit = dir.join("audit.jsonl").display(),
        key = key.display(),
    )
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_say_what_happened_and_no_canary_reaches_the_file_or_the_logs() {
    let _logs = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let m = mock(MockOptions {
        fail_every: Some(3),
        chunks: 4,
        interval: Duration::from_millis(5),
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&config(dir.path(), &m.url())).await;
    let url = s.url("/openai/v1/chat/completions?debug=canary.person@example.org");
    let send = |stream: bool| {
        s.client
            .post(&url)
            .header("traceparent", CLIENT_TRACE)
            .header("authorization", format!("Bearer {APP_KEY}"))
            .header("x-mock-echo", "1")
            .json(&pii_body(stream))
            .send()
    };
    // 1: plain; 2: streamed; 3: the mock fails its 3rd request, the retry (4th) passes
    let r = send(false).await.unwrap();
    assert_eq!(r.status(), 200);
    let answer = r.text().await.unwrap();
    assert!(
        answer.contains(EMAIL),
        "the client gets the answer unredacted"
    );
    let r = send(true).await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, done) = read_stream(r).await;
    assert!(done);
    let r = send(false).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = send(false).await.unwrap();
    assert_eq!(r.status(), 429, "the 4th is over the tenant's 3/m");
    assert_no_leak(&s, &canaries()).await;
    s.assert_metric("llm_sidecar_audit_records_total", 4.0)
        .await;
    s.shutdown().await;

    let file = dir.path().join("audit.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    for c in canaries() {
        assert!(!text.contains(c), "{c:?} reached the audit file:\n{text}");
    }
    let v = audit::verify(std::slice::from_ref(&file)).expect("an intact chain");
    assert_eq!(
        (v.records, v.first_seq, v.starts_after.as_str()),
        (4, 1, audit::GENESIS)
    );

    let lines = read_lines(&file);
    let plain = &lines[0];
    assert_eq!(plain["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(plain["tenant"], "team-a");
    assert_eq!(plain["route"], "mock");
    assert_eq!(plain["provider"], "mock");
    assert_eq!(plain["model"], "gpt-4o-mini");
    assert_eq!(plain["response_model"], "gpt-4o-mini");
    assert_eq!(plain["method"], "POST");
    assert_eq!(plain["status"], 200);
    assert_eq!(plain["attempts"], 1);
    assert!(plain["tokens"]["input"].as_u64().unwrap() > 0);
    assert_eq!(plain["tokens"]["output"], 4);
    assert!(plain["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(plain["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(
        plain["path"],
        "/openai/v1/chat/completions?debug=[REDACTED:email]"
    );
    let req = plain["request_body"].as_str().unwrap();
    for masked in [
        "[REDACTED:api_key]",
        "[REDACTED:secret]",
        "[REDACTED:email]",
        "139****5678",
        "[REDACTED:cn_id]",
        "[REDACTED:card]",
        "\"user\":\"[REDACTED:json_path]\"",
    ] {
        assert!(req.contains(masked), "{masked} missing in {req}");
    }
    let resp = plain["response_body"].as_str().unwrap();
    assert!(
        resp.contains("chat.completion") && resp.contains("[REDACTED:email]"),
        "{resp}"
    );
    assert!(plain.get("ttft_ms").is_none(), "TTFT is for streams");

    let stream = &lines[1];
    assert!(stream["ttft_ms"].as_f64().unwrap() > 0.0);
    let resp = stream["response_body"].as_str().unwrap();
    assert!(
        resp.starts_with("data: ") && resp.contains("[DONE]"),
        "{resp}"
    );
    assert!(resp.contains("[REDACTED:card]"), "{resp}");
    assert_eq!(stream["tokens"]["output"], 4);

    let retried = &lines[2];
    assert_eq!(retried["status"], 200);
    assert_eq!(retried["attempts"], 2);
    assert_eq!(retried["decisions"], json!(["retry after 500"]));

    let refused = &lines[3];
    assert_eq!(refused["status"], 429);
    assert_eq!(refused["error"], "rate_limited");
    assert_eq!(refused["decisions"], json!(["limit tiny: refused"]));
    assert_eq!(refused["attempts"], 0);
    assert!(refused.get("response_body").is_none());
    assert!(refused["request_body"]
        .as_str()
        .unwrap()
        .contains("139****5678"));
}

/// JSON as Python's `json.dumps` writes it by default (and `requests`, `aiohttp`): every
/// non-ASCII character escaped. `every_other` escapes only every other one (mixed).
fn python_json(v: &Value, every_other: bool) -> String {
    let mut out = String::new();
    let mut n = 0;
    for c in v.to_string().chars() {
        n += usize::from(!c.is_ascii());
        if c.is_ascii() || (every_other && n % 2 == 1) {
            out.push(c);
            continue;
        }
        let mut units = [0u16; 2];
        for u in c.encode_utf16(&mut units) {
            out.push_str(&format!("\\u{u:04x}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_is_masked_in_escaped_json_requests_answers_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let m = mock(MockOptions {
        chunks: 2,
        ..Default::default()
    })
    .await;
    let yaml = format!(
        r#"audit:
  output: file
  path: {audit}
providers:
  mock: {{ kind: openai, base_url: "{mock}/v1", auth: {{ type: bearer, token: prov-canary-1234567 }} }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: mock
    audit_bodies: {{ max_bytes: 64KiB }}
"#,
        audit = dir.path().join("audit.jsonl").display(),
        mock = m.url(),
    );
    let s = TestSidecar::start(&yaml).await;
    // Each value right after a CJK character: escaped, the escape's last hex digit
    // touches it.
    let text = "号码13812345678，卡号4111111111111111，身份证11010519491231002X，邮箱jane.doe@example.com，电话+44 20 7946 0958，密钥sk-proj-AbCdEf0123456789xyz🙂";
    let gone = [
        "13812345678",
        "4111111111111111",
        "11010519491231002X",
        "jane.doe@example.com",
        "7946 0958",
        "AbCdEf0123456789",
    ];
    let mut sent = 0;
    for (spelling, escape, every_other) in [
        ("utf-8", false, false),
        ("escaped", true, false),
        ("mixed", true, true),
    ] {
        for stream in [false, true] {
            let mut body = json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": text}],
                "stream": stream,
            });
            if stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            let raw = if escape {
                python_json(&body, every_other)
            } else {
                body.to_string()
            };
            let mut req = s
                .client
                .post(s.url("/openai/v1/chat/completions"))
                .header("content-type", "application/json")
                .header("x-mock-echo", "1");
            if escape {
                req = req.header("x-mock-ascii", "1");
            }
            let r = req.body(raw).send().await.unwrap();
            assert_eq!(r.status(), 200, "{spelling}");
            let answer = r.text().await.unwrap();
            if escape {
                assert!(
                    answer.contains(r"\u53f7") || answer.contains(r"\u7801"),
                    "{spelling}: the provider answered escaped: {answer}"
                );
            }
            sent += 1;
        }
    }
    s.assert_metric("llm_sidecar_audit_records_total", f64::from(sent))
        .await;
    s.shutdown().await;

    let file = dir.path().join("audit.jsonl");
    let stored = std::fs::read_to_string(&file).unwrap();
    let digits: String = stored.chars().filter(char::is_ascii_digit).collect();
    for g in gone {
        assert!(
            !stored.contains(g),
            "{g:?} reached the audit file:\n{stored}"
        );
        let d: String = g.chars().filter(char::is_ascii_digit).collect();
        if d.len() >= 8 {
            assert!(
                !digits.contains(&d),
                "the digits of {g:?} reached the audit file"
            );
        }
    }
    let lines = read_lines(&file);
    assert_eq!(lines.len(), sent as usize);
    for (i, line) in lines.iter().enumerate() {
        let req: Value = serde_json::from_str(line["request_body"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("record {i}: the request body is not JSON ({e})"));
        let content = req["messages"][0]["content"].as_str().unwrap();
        for shown in [
            "138****5678",
            "[REDACTED:card]",
            "[REDACTED:cn_id]",
            "号码",
            "🙂",
        ] {
            assert!(
                content.contains(shown),
                "record {i}: {shown} missing: {content}"
            );
        }
        let resp = line["response_body"].as_str().unwrap();
        let docs: Vec<&str> = if resp.starts_with("data: ") {
            resp.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .collect()
        } else {
            vec![resp]
        };
        assert!(!docs.is_empty(), "record {i}: {resp}");
        for d in docs {
            serde_json::from_str::<Value>(d)
                .unwrap_or_else(|e| panic!("record {i}: a stored answer is not JSON ({e}): {d}"));
        }
        assert!(resp.contains("138****5678"), "record {i}: {resp}");
    }
}

fn verify_cli(files: &[&Path]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llm-sidecar"))
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn raw_record(
    n: u32,
    redactor: &std::sync::Arc<llm_sidecar::observability::redact::Redactor>,
) -> Box<audit::Record> {
    Box::new(audit::Record {
        time: std::time::SystemTime::now(),
        trace_id: Some([7; 16]),
        tenant: Some("t".into()),
        route: Some("r".into()),
        provider: Some("p".into()),
        key: None,
        model: Some("m".into()),
        response_model: None,
        upstream_model: None,
        apis: None,
        method: http::Method::POST,
        target: format!("/v1/chat/completions?n={n}"),
        status: 200,
        error: None,
        attempts: 1,
        usage: None,
        latency: Duration::from_millis(3),
        ttft: None,
        client: None,
        decisions: Vec::new(),
        request_body: Some(audit::RawBody {
            bytes: bytes::Bytes::from(format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(900))),
            complete: true,
            cap: 4096,
        }),
        response_body: None,
        redactor: redactor.clone(),
    })
}

fn metrics() -> audit::AuditMetrics {
    let m = llm_sidecar::observability::metrics::Metrics::new();
    m.audit()
}

#[test]
fn rotated_files_and_a_restart_continue_one_chain_that_verify_checks() {
    use llm_sidecar::config::compile::{AuditSettings, AuditSink};
    use llm_sidecar::config::schema::AuditWhenFull;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/audit.jsonl");
    let settings = AuditSettings {
        sink: AuditSink::File {
            path: path.clone(),
            max_size: 4096,
            max_files: 10,
        },
        queue: 64,
        when_full: AuditWhenFull::DropNew,
    };
    let redactor =
        std::sync::Arc::new(llm_sidecar::observability::redact::Redactor::builtins_only());
    // two runs of the sidecar appending to the same file
    for run in 0..2 {
        let m = metrics();
        let log = audit::AuditLog::start(&settings, m.clone()).unwrap();
        for n in 0..10 {
            log.submit(raw_record(run * 10 + n, &redactor));
        }
        log.close(Duration::from_secs(5));
        assert_eq!(m.written.get(), 10);
    }
    let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
    let mut files: Vec<PathBuf> = (1..=10)
        .rev()
        .map(numbered)
        .filter(|p| p.exists())
        .collect();
    assert!(files.len() >= 3, "rotated at 4 KiB: {files:?}");
    files.push(path.clone());
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() <= 4096);
    }
    let v = audit::verify(&files).expect("one chain over every file and both runs");
    assert_eq!((v.records, v.first_seq, v.last_seq), (20, 1, 20));

    // the CLI: intact, then a line edited, then a line removed
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (ok, out) = verify_cli(&refs);
    assert!(ok, "{out}");
    assert!(
        out.contains("ok: 20 records, seq 1..20, from the first record"),
        "{out}"
    );

    // the newest rotated file: full, several lines
    let last = &files[files.len() - 2];
    let original = std::fs::read_to_string(last).unwrap();
    let lines: Vec<&str> = original.split_inclusive('\n').collect();
    assert!(lines.len() >= 3, "{}", lines.len());
    std::fs::write(
        last,
        original.replacen("\"status\":200", "\"status\":201", 2),
    )
    .unwrap();
    let (ok, out) = verify_cli(&[last]);
    assert!(!ok);
    assert!(
        out.contains(&format!("{}:1: ", last.display())) && out.contains("edited"),
        "{out}"
    );

    let removed: String = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| *l)
        .collect();
    std::fs::write(last, removed).unwrap();
    let (ok, out) = verify_cli(&[last]);
    assert!(!ok);
    assert!(
        out.contains(&format!("{}:2: ", last.display())) && out.contains("removed"),
        "{out}"
    );

    // a whole rotated file missing from the middle
    std::fs::write(last, &original).unwrap();
    let gap: Vec<&Path> = refs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, p)| *p)
        .collect();
    let (ok, out) = verify_cli(&gap);
    assert!(!ok && out.contains("removed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_sink_drops_and_counts_records_and_never_holds_up_a_request() {
    let m = default_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sidecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"version: 1
log: {{ format: json }}
listeners: {{ reverse: "127.0.0.1:0", admin: "127.0.0.1:0" }}
audit:
  output: stdout
  queue: 4
providers:
  mock:
    kind: openai
    base_url: {}/v1
    auth: {{ type: bearer, token: sk-audit }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: mock
    audit_bodies: {{ max_bytes: 64KiB }}
"#,
            m.url()
        ),
    )
    .unwrap();
    // stdout is a pipe nobody reads: once its 64 KiB buffer is full, the writer blocks
    let child = Command::new(env!("CARGO_BIN_EXE_llm-sidecar"))
        .args(["run", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stderr = child.0.stderr.take().unwrap();
    let (reverse, admin) = process::listening_addrs(stderr);
    let client = http_client();
    let mut body = chat_body(false);
    body["messages"][0]["content"] = json!("y".repeat(20_000));
    let started = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let t = std::time::Instant::now();
        // A request that waited for the stuck sink would never be answered.
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            client
                .post(format!("http://{reverse}/openai/v1/chat/completions"))
                .json(&body)
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} waited on the stuck audit sink"))
        .unwrap();
        assert_eq!(r.status(), 200);
        slowest = slowest.max(t.elapsed());
    }
    let took = started.elapsed();
    // Requests never wait on the audit log: with the sink stuck since about the third
    // record, each is answered at the mock's own pace (a few ms; 2 s is far above that
    // and far below the 5 s a waiting request would be cut at).
    assert!(
        slowest < Duration::from_secs(2),
        "the slowest request took {slowest:?} with the audit sink stuck"
    );
    // Each record is queued (or dropped) when its exchange ends, just after the response:
    // wait until all 40 are accounted for (at most 7 sit in the pipe and the queue).
    let deadline = std::time::Instant::now() + WAIT;
    let (dropped, written) = loop {
        let metrics = metrics_at(&client, &admin).await;
        let dropped = metric_value(
            &metrics,
            r#"llm_sidecar_audit_dropped_total{reason="queue_full"}"#,
        );
        let written = metric_value(&metrics, "llm_sidecar_audit_records_total");
        if dropped + written >= 33.0 || std::time::Instant::now() > deadline {
            break (dropped, written);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // 40 records of ~20 KiB: the pipe takes about 3, the queue 4, the rest are dropped
    assert!(dropped >= 25.0, "dropped {dropped}, written {written}");
    assert!(written <= 10.0, "written {written}");
    eprintln!("40 requests with a stuck audit sink took {took:?}; {dropped} records dropped");
    drop(child);
}

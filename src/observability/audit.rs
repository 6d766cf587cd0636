//! The audit log: one JSON line per request, redacted, hash-chained, written off the
//! request path.
//!
//! ```text
//! logging hook ──► Record (raw fields, bodies as shared Bytes) ──► bounded queue ──►
//!   writer thread: redact ─► serialise ─► chain (seq, prev, hash) ─► file | stdout
//! ```
//!
//! - **Never blocks a request.** The request path builds a [`Record`] and pushes it into
//!   a lock-free bounded queue; the writer thread does the redaction, serialisation,
//!   hashing and I/O. When the queue is full the configured policy drops the new or the
//!   oldest record, and every drop is counted (`llm_sidecar_audit_dropped_total`).
//! - **Redacted before written.** Bodies and the path go through the snapshot's
//!   [`Redactor`]: secrets by value, the regex and JSON-path rules.
//! - **Tamper-evident.** Each line ends with `"seq":N,"prev":"<hash of line N-1>",
//!   "hash":"<sha256 of this line up to the hash field>"`. `llm-sidecar audit verify`
//!   recomputes the chain and names the first line that was edited, or after which lines
//!   were removed. A restarted sidecar continues the chain of the file it appends to;
//!   rotated files continue it too, so `verify` over `audit.jsonl.2 audit.jsonl.1
//!   audit.jsonl` checks the files joined. (Removing lines from the very end of the
//!   newest file cannot be seen from the chain alone: compare `seq` with the
//!   `llm_sidecar_audit_records_total` counter.)

use super::redact::Redactor;
use crate::config::schema::AuditWhenFull;
use crate::usage::Usage;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use prometheus::{IntCounter, IntCounterVec};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where audit records are written; a startup setting (changing it needs a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    File {
        path: PathBuf,
        max_size: u64,
        max_files: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditSettings {
    pub sink: AuditSink,
    pub queue: usize,
    pub when_full: AuditWhenFull,
}

impl std::fmt::Display for AuditSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sink {
            AuditSink::Stdout => write!(f, "stdout")?,
            AuditSink::File {
                path,
                max_size,
                max_files,
            } => write!(
                f,
                "file {} (rotated at {max_size} bytes, {max_files} kept)",
                path.display()
            )?,
        }
        write!(f, ", queue {}, {:?}", self.queue, self.when_full)
    }
}

/// A route's body capture for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyCapture {
    pub request: bool,
    pub response: bool,
    pub max_bytes: usize,
}

/// The `prev` of the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A body kept for the record, raw (redacted by the writer).
pub struct RawBody {
    pub bytes: Bytes,
    /// The whole body is in `bytes` (false: it was cut while captured).
    pub complete: bool,
    /// Written at most this many bytes.
    pub cap: usize,
}

/// Everything one audit line says, as the request path has it.
pub struct Record {
    pub time: SystemTime,
    pub trace_id: Option<[u8; 16]>,
    pub tenant: Option<Arc<str>>,
    pub route: Option<Arc<str>>,
    pub provider: Option<Arc<str>>,
    /// The pool key's name (never its value).
    pub key: Option<Arc<str>>,
    pub model: Option<Arc<str>>,
    pub response_model: Option<Arc<str>>,
    /// The model sent to the provider (after the route's `model` / `models`).
    pub upstream_model: Option<Arc<str>>,
    /// A translated request: the client's API and the provider's.
    pub apis: Option<(&'static str, &'static str)>,
    pub method: http::Method,
    /// Path and query, as the client sent them (redacted when written).
    pub target: String,
    pub status: u16,
    /// The sidecar's own error code, when it answered itself or cut the response.
    pub error: Option<&'static str>,
    pub attempts: u32,
    pub usage: Option<Usage>,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub client: Option<SocketAddr>,
    /// Why the request went the way it did: retries, fallbacks, refusals.
    pub decisions: Vec<Cow<'static, str>>,
    pub request_body: Option<RawBody>,
    pub response_body: Option<RawBody>,
    /// The redaction rules of the config the request ran on.
    pub redactor: Arc<Redactor>,
}

#[derive(Serialize)]
struct Tokens {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    reasoning: u64,
}

/// The JSON shape of a line, before the chain fields.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_api: Option<&'static str>,
    method: &'a str,
    path: Cow<'a, str>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<Tokens>,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttft_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    decisions: &'a [Cow<'static, str>],
    #[serde(skip_serializing_if = "Option::is_none")]
    request_body: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    request_body_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_body_omitted: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_body: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    response_body_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_body_omitted: Option<&'static str>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// A body for the line: (text, cut, omitted reason).
fn body_field(r: &Redactor, b: &Option<RawBody>) -> (Option<String>, bool, Option<&'static str>) {
    match b {
        None => (None, false, None),
        Some(b) => match r.body(&b.bytes, b.cap, b.complete) {
            Some((text, cut)) => (Some(text), cut, None),
            None => (None, false, Some("not_json")),
        },
    }
}

impl Record {
    /// The line's JSON object without its closing brace (the chain fields follow).
    fn render(&self) -> Vec<u8> {
        let red = &*self.redactor;
        let (request_body, request_body_truncated, request_body_omitted) =
            body_field(red, &self.request_body);
        let (response_body, response_body_truncated, response_body_omitted) =
            body_field(red, &self.response_body);
        let line = Line {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            trace_id: self.trace_id.map(hex::encode),
            tenant: self.tenant.as_deref(),
            route: self.route.as_deref(),
            provider: self.provider.as_deref(),
            key: self.key.as_deref(),
            model: self.model.as_deref(),
            response_model: self.response_model.as_deref(),
            upstream_model: self.upstream_model.as_deref(),
            api: self.apis.map(|a| a.0),
            upstream_api: self.apis.map(|a| a.1),
            method: self.method.as_str(),
            path: red.text_escaped(&self.target, crate::observability::redact::Escapes::Percent),
            status: self.status,
            error: self.error,
            attempts: self.attempts,
            tokens: self.usage.map(|u| Tokens {
                input: u.input,
                output: u.output,
                cache_read: u.cache_read,
                cache_write: u.cache_write,
                reasoning: u.reasoning,
            }),
            latency_ms: ms(self.latency),
            ttft_ms: self.ttft.map(ms),
            client: self.client.map(|c| c.to_string()),
            decisions: &self.decisions,
            request_body,
            request_body_truncated,
            request_body_omitted,
            response_body,
            response_body_truncated,
            response_body_omitted,
        };
        // Serialising plain strings and numbers cannot fail.
        let mut v = serde_json::to_vec(&line).unwrap_or_else(|_| b"{".to_vec());
        v.pop(); // the closing brace
        v
    }
}

/// The hash chain's state: the last record's number and hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub seq: u64,
    pub hash: String,
}

impl Chain {
    pub fn genesis() -> Chain {
        Chain {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }

    /// Appends the chain fields to a rendered record (`{...` without its `}`) and
    /// returns the whole line with its newline.
    pub fn seal(&mut self, mut body: Vec<u8>) -> Vec<u8> {
        self.seq += 1;
        let sep = if body.len() > 1 { "," } else { "" };
        body.extend_from_slice(
            format!("{sep}\"seq\":{},\"prev\":\"{}\"", self.seq, self.hash).as_bytes(),
        );
        let hash = hex::encode(Sha256::digest(&body));
        body.extend_from_slice(b",\"hash\":\"");
        body.extend_from_slice(hash.as_bytes());
        body.extend_from_slice(b"\"}\n");
        self.hash = hash;
        body
    }
}

/// The chain fields of one line, checked against its own hash.
#[derive(Debug)]
pub struct Sealed {
    pub seq: u64,
    pub prev: String,
    pub hash: String,
    /// The hash matches the line's content.
    pub intact: bool,
}

/// Reads a line's chain fields; None when it is not an audit record at all.
pub fn unseal(line: &[u8]) -> Option<Sealed> {
    const MARK: &[u8] = b",\"hash\":\"";
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let at = line.windows(MARK.len()).rposition(|w| w == MARK)?;
    let tail = &line[at + MARK.len()..];
    if tail.len() != 66 || &tail[64..] != b"\"}" {
        return None;
    }
    let hash = std::str::from_utf8(&tail[..64]).ok()?.to_string();
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let seq = v.get("seq")?.as_u64()?;
    let prev = v.get("prev")?.as_str()?.to_string();
    let intact = hex::encode(Sha256::digest(&line[..at])) == hash;
    Some(Sealed {
        seq,
        prev,
        hash,
        intact,
    })
}

/// What `verify` found wrong, pointing at a line.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// What an intact chain holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The first record's `prev`: the genesis hash, or the record before these files.
    pub starts_after: String,
}

/// Checks files as one chain, in the order given (oldest first). Stops at the first
/// break.
pub fn verify(files: &[PathBuf]) -> Result<Verified, Broken> {
    let mut last: Option<(u64, String)> = None;
    let mut out = Verified {
        records: 0,
        first_seq: 0,
        last_seq: 0,
        starts_after: String::new(),
    };
    for file in files {
        let text = std::fs::read(file).map_err(|e| Broken {
            file: file.clone(),
            line: 0,
            reason: format!("cannot read: {e}"),
        })?;
        for (i, line) in text.split_inclusive(|b| *b == b'\n').enumerate() {
            let broken = |reason: String| Broken {
                file: file.clone(),
                line: i + 1,
                reason,
            };
            if !line.ends_with(b"\n") {
                return Err(broken(
                    "the last line is cut short (the writer stopped mid-line, or the file was truncated)".into(),
                ));
            }
            let s = unseal(line).ok_or_else(|| {
                broken("not an audit record (no chain fields, or not JSON): the line was edited or inserted".into())
            })?;
            if !s.intact {
                return Err(broken(format!(
                    "record seq {} does not match its hash: the line was edited",
                    s.seq
                )));
            }
            match &last {
                None => {
                    out.first_seq = s.seq;
                    out.starts_after = s.prev.clone();
                    if s.seq == 1 && s.prev != GENESIS {
                        return Err(broken(
                            "record seq 1 does not start from the genesis hash".into(),
                        ));
                    }
                }
                Some((seq, hash)) => {
                    if s.seq != seq + 1 {
                        let reason = if s.seq > seq + 1 {
                            format!(
                                "record seq {} follows seq {seq}: {} record(s) before this line were removed",
                                s.seq,
                                s.seq - seq - 1
                            )
                        } else {
                            format!(
                                "record seq {} follows seq {seq}: records were reordered or repeated",
                                s.seq
                            )
                        };
                        return Err(broken(reason));
                    }
                    if &s.prev != hash {
                        return Err(broken(format!(
                            "record seq {} does not chain to the line before it (its prev is not that line's hash): a record was replaced",
                            s.seq
                        )));
                    }
                }
            }
            out.records += 1;
            out.last_seq = s.seq;
            last = Some((s.seq, s.hash));
        }
    }
    Ok(out)
}

/// Metrics of the audit log.
#[derive(Clone)]
pub struct AuditMetrics {
    pub written: IntCounter,
    pub dropped: IntCounterVec,
}

struct Shared {
    queue: ArrayQueue<Box<Record>>,
    stop: AtomicBool,
}

/// The audit log: a queue and the thread that writes it.
pub struct AuditLog {
    shared: Arc<Shared>,
    when_full: AuditWhenFull,
    writer: std::thread::Thread,
    done: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    dropped_full: IntCounter,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("queued", &self.shared.queue.len())
            .finish()
    }
}

impl AuditLog {
    /// Opens the sink (a file is created if needed, and its chain continued) and starts
    /// the writer thread.
    pub fn start(settings: &AuditSettings, metrics: AuditMetrics) -> io::Result<Arc<AuditLog>> {
        let out = Output::open(&settings.sink)?;
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(settings.queue.max(1)),
            stop: AtomicBool::new(false),
        });
        let dropped_full = metrics.dropped.with_label_values(&["queue_full"]);
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("llm-sidecar-audit".into())
            .spawn(move || write_loop(thread_shared, out, metrics))?;
        Ok(Arc::new(AuditLog {
            shared,
            when_full: settings.when_full,
            writer: handle.thread().clone(),
            done: parking_lot::Mutex::new(Some(handle)),
            dropped_full,
        }))
    }

    /// Queues a record; never waits.
    pub fn submit(&self, r: Box<Record>) {
        match self.when_full {
            AuditWhenFull::DropNew => {
                if self.shared.queue.push(r).is_err() {
                    self.dropped_full.inc();
                }
            }
            AuditWhenFull::DropOldest => {
                if self.shared.queue.force_push(r).is_some() {
                    self.dropped_full.inc();
                }
            }
        }
        self.writer.unpark();
    }

    /// Writes what is queued and stops the writer (at shutdown). Waits at most `limit`.
    pub fn close(&self, limit: Duration) {
        self.shared.stop.store(true, Ordering::Release);
        self.writer.unpark();
        let Some(handle) = self.done.lock().take() else {
            return;
        };
        let deadline = std::time::Instant::now() + limit;
        while !handle.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if handle.is_finished() {
            let _ = handle.join();
        } else {
            tracing::warn!(
                queued = self.shared.queue.len(),
                "the audit log did not finish writing in time"
            );
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.writer.unpark();
    }
}

fn write_loop(shared: Arc<Shared>, mut out: Output, metrics: AuditMetrics) {
    let dropped_write = metrics.dropped.with_label_values(&["write_error"]);
    let mut failing = false;
    loop {
        let mut wrote = 0;
        while let Some(r) = shared.queue.pop() {
            let line = out.chain.seal(r.render());
            drop(r);
            match out.write(&line) {
                Ok(()) => {
                    wrote += 1;
                    metrics.written.inc();
                    if failing {
                        failing = false;
                        tracing::info!("the audit log is writable again");
                    }
                }
                Err(e) => {
                    dropped_write.inc();
                    if !failing {
                        failing = true;
                        tracing::error!(error = %e, "cannot write the audit log; records are dropped (and counted) until it works again");
                    }
                }
            }
        }
        if wrote > 0 {
            if let Err(e) = out.flush() {
                if !failing {
                    failing = true;
                    tracing::error!(error = %e, "cannot flush the audit log");
                }
            }
        }
        if shared.stop.load(Ordering::Acquire) && shared.queue.is_empty() {
            let _ = out.flush();
            return;
        }
        std::thread::park_timeout(Duration::from_millis(500));
    }
}

/// The open sink, its size and the chain state.
struct Output {
    sink: Sink,
    chain: Chain,
}

enum Sink {
    Stdout(io::Stdout),
    File {
        path: PathBuf,
        file: BufWriter<File>,
        size: u64,
        max_size: u64,
        max_files: usize,
    },
}

impl Output {
    fn open(sink: &AuditSink) -> io::Result<Output> {
        match sink {
            AuditSink::Stdout => Ok(Output {
                sink: Sink::Stdout(io::stdout()),
                chain: Chain::genesis(),
            }),
            AuditSink::File {
                path,
                max_size,
                max_files,
            } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let mut file = OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(path)?;
                let (chain, size, cut) = resume(&mut file)?;
                let mut out = Output {
                    sink: Sink::File {
                        path: path.clone(),
                        file: BufWriter::with_capacity(64 << 10, file),
                        size,
                        max_size: *max_size,
                        max_files: *max_files,
                    },
                    chain,
                };
                if cut {
                    // A line cut by a crash stays (verify points at it); the next
                    // record starts on a line of its own.
                    out.write(b"\n")?;
                }
                Ok(out)
            }
        }
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            Sink::Stdout(s) => s.lock().write_all(line),
            Sink::File {
                path,
                file,
                size,
                max_size,
                max_files,
            } => {
                if *size > 0 && *size + line.len() as u64 > *max_size {
                    file.flush()?;
                    rotate(path, *max_files)?;
                    let f = OpenOptions::new().create(true).append(true).open(&*path)?;
                    *file = BufWriter::with_capacity(64 << 10, f);
                    *size = 0;
                }
                file.write_all(line)?;
                *size += line.len() as u64;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Stdout(s) => s.lock().flush(),
            Sink::File { file, .. } => file.flush(),
        }
    }
}

/// `path` becomes `path.1`, `path.1` becomes `path.2`, ...; the oldest beyond
/// `max_files` goes.
fn rotate(path: &Path, max_files: usize) -> io::Result<()> {
    let numbered = |n: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    if max_files == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(max_files));
    for n in (1..max_files).rev() {
        let from = numbered(n);
        if from.exists() {
            std::fs::rename(&from, numbered(n + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

/// The chain state at the end of an existing file, its size, and whether its last line
/// is cut short.
fn resume(file: &mut File) -> io::Result<(Chain, u64, bool)> {
    let size = file.seek(SeekFrom::End(0))?;
    if size == 0 {
        return Ok((Chain::genesis(), 0, false));
    }
    // The last record may be large (bodies): widen the window until a whole one is in
    // it, or the whole file is.
    let mut window: u64 = 256 << 10;
    loop {
        let tail_len = size.min(window);
        file.seek(SeekFrom::Start(size - tail_len))?;
        let mut tail = Vec::with_capacity(tail_len as usize);
        file.read_to_end(&mut tail)?;
        let cut = !tail.ends_with(b"\n");
        let last = tail.split(|b| *b == b'\n').rev().find_map(unseal);
        if last.is_some() || tail_len == size {
            let chain = last.map_or_else(Chain::genesis, |s| Chain {
                seq: s.seq,
                hash: s.hash,
            });
            return Ok((chain, size, cut));
        }
        window = window.saturating_mul(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u16) -> Vec<u8> {
        format!("{{\"n\":{n}").into_bytes()
    }

    fn write_chain(path: &Path, n: u16) {
        let mut c = Chain::genesis();
        let mut out = Vec::new();
        for i in 0..n {
            out.extend(c.seal(record(i)));
        }
        std::fs::write(path, out).expect("write");
    }

    #[test]
    fn verify_finds_edits_removals_and_cuts() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.jsonl");
        write_chain(&p, 5);
        let ok = verify(std::slice::from_ref(&p)).expect("intact");
        assert_eq!((ok.records, ok.first_seq, ok.last_seq), (5, 1, 5));

        let text = std::fs::read_to_string(&p).expect("read");
        let lines: Vec<&str> = text.split_inclusive('\n').collect();

        let edited = text.replacen("\"n\":2", "\"n\":7", 1);
        std::fs::write(&p, edited).expect("write");
        let e = verify(std::slice::from_ref(&p)).expect_err("edited");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.reason.contains("edited"), "{e}");

        let removed: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| *l)
            .collect();
        std::fs::write(&p, removed).expect("write");
        let e = verify(std::slice::from_ref(&p)).expect_err("removed");
        assert_eq!(e.line, 2, "{e}");
        assert!(
            e.reason
                .contains("1 record(s) before this line were removed"),
            "{e}"
        );

        // the first line removed: seq 2 cannot start a chain that claims to be whole
        let headless: String = lines[1..].concat();
        std::fs::write(&p, &headless).expect("write");
        let ok = verify(std::slice::from_ref(&p)).expect("a rotated tail verifies alone");
        assert_eq!(ok.first_seq, 2);
        assert_ne!(ok.starts_after, GENESIS);

        let cut = &text[..text.len() - 10];
        std::fs::write(&p, cut).expect("write");
        let e = verify(std::slice::from_ref(&p)).expect_err("cut");
        assert_eq!(e.line, 5);

        std::fs::write(&p, format!("{}{{\"injected\":1}}\n", text)).expect("write");
        let e = verify(std::slice::from_ref(&p)).expect_err("inserted");
        assert_eq!(e.line, 6);
        assert!(e.reason.contains("not an audit record"), "{e}");
    }

    #[test]
    fn a_restart_continues_the_chain_after_a_record_larger_than_the_first_window() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.jsonl");
        let mut c = Chain::genesis();
        let mut out = c.seal(record(1));
        out.extend(c.seal(format!("{{\"body\":\"{}\"", "x".repeat(600 << 10)).into_bytes()));
        std::fs::write(&p, out).expect("write");
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&p)
            .expect("open");
        let (resumed, _, cut) = resume(&mut f).expect("resume");
        assert_eq!(resumed, c, "seq 2 and its hash, not the genesis");
        assert!(!cut);
    }

    #[test]
    fn verify_joins_rotated_files_and_sees_a_missing_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = Chain::genesis();
        let mut files = Vec::new();
        for f in 0..3 {
            let mut out = Vec::new();
            for i in 0..4 {
                out.extend(c.seal(record(f * 10 + i)));
            }
            let p = dir.path().join(format!("f{f}"));
            std::fs::write(&p, out).expect("write");
            files.push(p);
        }
        assert_eq!(verify(&files).expect("joined").records, 12);
        let e = verify(&[files[0].clone(), files[2].clone()]).expect_err("gap");
        assert_eq!((e.file.clone(), e.line), (files[2].clone(), 1));
        assert!(e.reason.contains("4 record(s)"), "{e}");
    }
}

//! Compiling `audit` (the sink, its redaction rules), routes' `audit_bodies`, and
//! `telemetry` (OTLP export).

use super::audit::{AuditSettings, AuditSink, BodyCapture};
use super::otlp::TelemetrySettings;
use super::redact::{JsonPath, Mask, Redactor, RuleSpec};
use crate::config::build::Build;
use crate::config::schema::{self, AuditOutput, ConfigFile, MaskStyle};
use std::sync::Arc;

/// Most bytes one audited body may keep.
const MAX_AUDIT_BODY: u64 = 16 << 20;

/// The sink settings and the redactor (built over every secret resolved so far, so
/// call it after providers, tenants, forward and limits).
pub fn audit(
    b: &mut Build<'_>,
    file: &ConfigFile,
) -> (Option<AuditSettings>, Option<Arc<Redactor>>) {
    let a = &file.audit;
    let sink = match a.output {
        AuditOutput::Off => None,
        AuditOutput::Stdout => {
            if a.path.is_some() {
                b.errs.push("audit.path", "only used with `output: file`");
            }
            Some(AuditSink::Stdout)
        }
        AuditOutput::File => match &a.path {
            None => {
                b.errs.push(
                    "audit.path",
                    "`output: file` needs a path, e.g. /var/log/llm-sidecar/audit.jsonl",
                );
                None
            }
            Some(p) => {
                if a.max_size.get() < 4096 {
                    b.errs.push("audit.max_size", "must be at least 4KiB");
                }
                Some(AuditSink::File {
                    path: p.clone(),
                    max_size: a.max_size.get(),
                    max_files: a.max_files,
                })
            }
        },
    };
    if a.queue == 0 || a.queue > 1 << 20 {
        b.errs
            .push("audit.queue", "must be between 1 and 1048576 records");
    }
    let with_bodies = file.routes.iter().any(|r| r.audit_bodies.is_some());
    if a.output == AuditOutput::Off && with_bodies {
        b.warnings.push(
            "routes[].audit_bodies is set but audit.output is off: no bodies are written".into(),
        );
    }
    let redactor = redactor(b, &a.redact);
    let settings = sink.map(|sink| AuditSettings {
        sink,
        queue: a.queue.clamp(1, 1 << 20),
        when_full: a.when_full,
    });
    // Built even with the output off: a sink opened at start keeps writing (with
    // the new rules) after a reload that turns it off, until a restart.
    (settings, redactor.map(Arc::new))
}

fn mask(
    b: &mut Build<'_>,
    path: &str,
    style: MaskStyle,
    prefix: Option<usize>,
    suffix: Option<usize>,
) -> Mask {
    match style {
        MaskStyle::Full => {
            if prefix.is_some() || suffix.is_some() {
                b.errs
                    .push(path, "keep_prefix and keep_suffix need `mask: partial`");
            }
            Mask::Full
        }
        MaskStyle::Partial => Mask::Keep {
            prefix: prefix.unwrap_or(3),
            suffix: suffix.unwrap_or(4),
        },
    }
}

fn redactor(b: &mut Build<'_>, r: &schema::Redact) -> Option<Redactor> {
    let mut rules = Vec::new();
    for (i, rule) in r.rules.iter().enumerate() {
        let path = format!("audit.redact.rules[{i}]");
        if rule.name.is_empty()
            || !rule
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            b.errs.push(
                format!("{path}.name"),
                "use letters, digits, '_' and '-' (it is written into masked text)",
            );
        }
        let mask = mask(b, &path, rule.mask, rule.keep_prefix, rule.keep_suffix);
        rules.push(RuleSpec {
            name: rule.name.clone(),
            pattern: rule.pattern.clone(),
            mask,
        });
    }
    let mut paths = Vec::new();
    for (i, p) in r.json_paths.iter().enumerate() {
        let base = format!("audit.redact.json_paths[{i}]");
        let mask = mask(b, &base, p.mask, p.keep_prefix, p.keep_suffix);
        match JsonPath::parse(&p.path, mask) {
            Ok(j) => paths.push(j),
            Err(e) => b.errs.push(format!("{base}.path"), e),
        }
    }
    let secrets = std::mem::take(&mut b.secrets);
    match Redactor::new(secrets, &r.builtins, &rules, paths) {
        Ok(red) => Some(red),
        Err(errs) => {
            for (name, e) in errs {
                let at = r
                    .rules
                    .iter()
                    .position(|x| x.name == name)
                    .map(|i| format!("audit.redact.rules[{i}]"))
                    .or_else(|| {
                        r.builtins
                            .iter()
                            .position(|b| *b == name)
                            .map(|i| format!("audit.redact.builtins[{i}]"))
                    })
                    .unwrap_or_else(|| "audit.redact".into());
                b.errs.push(at, format!("{name}: {e}"));
            }
            None
        }
    }
}

pub fn audit_bodies(b: &mut Build<'_>, base: &str, r: &schema::Route) -> Option<BodyCapture> {
    let ab = r.audit_bodies.as_ref()?;
    if ab.max_bytes.get() == 0 || ab.max_bytes.get() > MAX_AUDIT_BODY {
        b.errs.push(
            format!("{base}.audit_bodies.max_bytes"),
            "must be between 1 byte and 16MiB",
        );
    }
    Some(BodyCapture {
        request: ab.request,
        response: ab.response,
        max_bytes: ab.max_bytes.get().clamp(1, MAX_AUDIT_BODY) as usize,
    })
}

pub fn telemetry(b: &mut Build<'_>, t: &schema::Telemetry) -> Option<TelemetrySettings> {
    let endpoint = t.otlp_endpoint.as_ref()?;
    match endpoint.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {}
            Ok(u) if u.scheme_str() == Some("https") => b.errs.push(
                "telemetry.otlp_endpoint",
                "https:// is not supported yet: export to a collector agent next to the sidecar over http://, e.g. http://127.0.0.1:4318/v1/traces",
            ),
            _ => b.errs.push(
                "telemetry.otlp_endpoint",
                "must be an http:// URL, e.g. http://127.0.0.1:4318/v1/traces",
            ),
        }
    if t.queue == 0 || t.batch == 0 || t.batch > t.queue {
        b.errs.push(
            "telemetry.batch",
            format!(
                "must be between 1 and telemetry.queue ({}), and queue at least 1",
                t.queue
            ),
        );
    }
    if t.service_name.is_empty() {
        b.errs.push("telemetry.service_name", "must not be empty");
    }
    Some(TelemetrySettings {
        endpoint: endpoint.clone(),
        service_name: t.service_name.clone(),
        queue: t.queue.max(1),
        batch: t.batch.clamp(1, t.queue.max(1)),
        delay: t.delay.get(),
        timeout: t.timeout.get(),
    })
}

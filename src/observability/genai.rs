//! Per-call LLM metrics: the OpenTelemetry GenAI client conventions in Prometheus form,
//! time to first token, and tokens by tenant and model.
//!
//! Label values are bounded: routes, providers and tenants come from the config; models
//! come from requests and responses, so they pass through [`ModelLabels`], which keeps
//! at most [`MAX_MODELS`] distinct well-formed names and calls the rest `other`.

use crate::config::schema::ProviderKind;
use arc_swap::ArcSwap;
use prometheus::{core::Collector, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Distinct model label values kept; later new names count as `other`.
pub const MAX_MODELS: usize = 200;

/// Longest model name the audit log and traces carry (bytes; cut on a character
/// boundary). Metrics labels have their own, stricter bound ([`ModelLabels`]).
pub const MAX_MODEL_NAME: usize = 256;

/// A model name as the audit log and spans carry it: as written, cut to
/// [`MAX_MODEL_NAME`] bytes. Never folded into `other`: that bound is for metrics only.
pub fn model_name(m: &str) -> &str {
    if m.len() <= MAX_MODEL_NAME {
        return m;
    }
    let mut end = MAX_MODEL_NAME;
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    &m[..end]
}

/// `gen_ai.provider.name` for a provider kind (the convention's well-known values).
pub fn provider_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => "openai",
        ProviderKind::AzureOpenai => "azure.ai.openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Deepseek => "deepseek",
        ProviderKind::Dashscope => "dashscope",
        ProviderKind::Ark => "volcengine.ark",
        ProviderKind::Ollama => "ollama",
        ProviderKind::Bedrock => "aws.bedrock",
        ProviderKind::VertexAi => "gcp.vertex_ai",
    }
}

/// `gen_ai.operation.name` from the request path.
pub fn operation_name(path: &str) -> &'static str {
    if path.contains("embed") {
        "embeddings"
    } else if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
        "text_completion"
    } else if path.contains("generateContent") || path.contains("/api/generate") {
        "generate_content"
    } else if path.ends_with("/chat/completions")
        || path.ends_with("/messages")
        || path.ends_with("/responses")
        || path.ends_with("/api/chat")
        || path.contains("/converse")
        || path.contains("/invoke")
    {
        "chat"
    } else {
        "other"
    }
}

/// Interns model names as label values, at most [`MAX_MODELS`] of them. Reads are a
/// lock-free map lookup; a new name copies the map once.
pub struct ModelLabels {
    known: ArcSwap<HashMap<Box<str>, Arc<str>>>,
    other: Arc<str>,
    none: Arc<str>,
    insert: parking_lot::Mutex<()>,
}

impl Default for ModelLabels {
    fn default() -> Self {
        ModelLabels {
            known: ArcSwap::from_pointee(HashMap::new()),
            other: Arc::from("other"),
            none: Arc::from("none"),
            insert: parking_lot::Mutex::new(()),
        }
    }
}

impl ModelLabels {
    pub fn label(&self, model: Option<&str>) -> Arc<str> {
        let Some(m) = model else {
            return self.none.clone();
        };
        if let Some(l) = self.known.load().get(m) {
            return l.clone();
        }
        let well_formed = !m.is_empty()
            && m.len() <= 100
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/@-+".contains(&b));
        if !well_formed {
            return self.other.clone();
        }
        let _one = self.insert.lock();
        let cur = self.known.load();
        if let Some(l) = cur.get(m) {
            return l.clone();
        }
        if cur.len() >= MAX_MODELS {
            return self.other.clone();
        }
        let mut next = HashMap::clone(&cur);
        let l: Arc<str> = Arc::from(m);
        next.insert(Box::from(m), l.clone());
        self.known.store(Arc::new(next));
        l
    }
}

/// One finished call, as the metrics see it.
pub struct Call<'a> {
    pub route: &'a str,
    pub provider: &'a str,
    pub gen_ai_provider: &'static str,
    pub operation: &'static str,
    pub tenant: &'a str,
    pub request_model: &'a str,
    pub response_model: &'a str,
    pub status: u16,
    /// The error type when the call failed (`x-llm-sidecar-error` cause, or the status).
    pub error: Option<&'a str>,
    pub duration: Duration,
    /// From the request's arrival to the first response body byte, for streams.
    pub ttft: Option<Duration>,
    pub usage: Option<crate::usage::Usage>,
}

pub struct GenAiMetrics {
    token_usage: HistogramVec,
    operation_duration: HistogramVec,
    ttft: HistogramVec,
    tpot: HistogramVec,
    requests: IntCounterVec,
    tenant_tokens: IntCounterVec,
    uptime: IntGauge,
    started: Instant,
    pub models: ModelLabels,
}

use super::metrics::must;

const GENAI_LABELS: [&str; 4] = [
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
];

impl GenAiMetrics {
    pub fn new() -> GenAiMetrics {
        let mut token_labels = GENAI_LABELS.to_vec();
        token_labels.push("gen_ai_token_type");
        let mut duration_labels = GENAI_LABELS.to_vec();
        duration_labels.push("error_type");
        GenAiMetrics {
            token_usage: must(HistogramVec::new(
                HistogramOpts::new(
                    "gen_ai_client_token_usage",
                    "Tokens used per call (OpenTelemetry gen_ai.client.token.usage), by token type: input or output.",
                )
                .buckets(vec![
                    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
                    1048576.0, 4194304.0, 16777216.0, 67108864.0,
                ]),
                &token_labels,
            )),
            operation_duration: must(HistogramVec::new(
                HistogramOpts::new(
                    "gen_ai_client_operation_duration_seconds",
                    "Duration of a call (OpenTelemetry gen_ai.client.operation.duration), from the request's arrival to the response's end; error_type is empty on success.",
                )
                .buckets(vec![
                    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92,
                ]),
                &duration_labels,
            )),
            ttft: must(HistogramVec::new(
                HistogramOpts::new(
                    "llm_sidecar_time_to_first_token_seconds",
                    "Streams: time from the request's arrival to the first response body byte from the provider.",
                )
                .buckets(vec![
                    0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
                    20.0, 40.0,
                ]),
                &["route", "provider", "model"],
            )),
            tpot: must(HistogramVec::new(
                HistogramOpts::new(
                    "llm_sidecar_time_per_output_token_seconds",
                    "Streams: time after the first token, divided by the output tokens after the first.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
                    0.1, 0.2, 0.5,
                ]),
                &["route", "provider", "model"],
            )),
            requests: must(IntCounterVec::new(
                Opts::new(
                    "llm_sidecar_llm_requests_total",
                    "Requests by route, provider, requested model, tenant and status class (2xx, 4xx, 5xx; 499 is a client that went away).",
                ),
                &["route", "provider", "model", "tenant", "status_class"],
            )),
            tenant_tokens: must(IntCounterVec::new(
                Opts::new(
                    "llm_sidecar_tenant_tokens_total",
                    "Tokens by tenant, requested model and type: input, output, cache_read, cache_write, reasoning.",
                ),
                &["tenant", "model", "type"],
            )),
            uptime: must(IntGauge::new(
                "llm_sidecar_uptime_seconds",
                "Seconds since the sidecar started.",
            )),
            started: Instant::now(),
            models: ModelLabels::default(),
        }
    }

    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.token_usage.clone()),
            Box::new(self.operation_duration.clone()),
            Box::new(self.ttft.clone()),
            Box::new(self.tpot.clone()),
            Box::new(self.requests.clone()),
            Box::new(self.tenant_tokens.clone()),
            Box::new(self.uptime.clone()),
        ]
    }

    /// Before a scrape.
    pub fn refresh(&self) {
        self.uptime
            .set(i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX));
    }

    pub fn record<'a>(&self, c: &Call<'a>) {
        let class = match c.status {
            499 => "499",
            s if s < 200 => "1xx",
            s if s < 300 => "2xx",
            s if s < 400 => "3xx",
            s if s < 500 => "4xx",
            _ => "5xx",
        };
        self.requests
            .with_label_values(&[c.route, c.provider, c.request_model, c.tenant, class])
            .inc();
        let genai: [&'a str; 4] = [
            c.operation,
            c.gen_ai_provider,
            c.request_model,
            c.response_model,
        ];
        let with =
            |extra: &'a str| -> [&'a str; 5] { [genai[0], genai[1], genai[2], genai[3], extra] };
        self.operation_duration
            .with_label_values(&with(c.error.unwrap_or("")))
            .observe(c.duration.as_secs_f64());
        if let Some(u) = c.usage {
            for (ty, n) in [("input", u.input), ("output", u.output)] {
                self.token_usage
                    .with_label_values(&with(ty))
                    .observe(n as f64);
            }
            for (ty, n) in u.by_type() {
                if n > 0 {
                    self.tenant_tokens
                        .with_label_values(&[c.tenant, c.request_model, ty])
                        .inc_by(n);
                }
            }
        }
        if let Some(ttft) = c.ttft {
            let labels = [c.route, c.provider, c.request_model];
            self.ttft
                .with_label_values(&labels)
                .observe(ttft.as_secs_f64());
            let output = c.usage.map_or(0, |u| u.output);
            if output > 1 && c.duration > ttft {
                let per = (c.duration - ttft).as_secs_f64() / (output - 1) as f64;
                self.tpot.with_label_values(&labels).observe(per);
            }
        }
    }
}

impl Default for GenAiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_and_request_models() {
        assert_eq!(operation_name("/v1/chat/completions"), "chat");
        assert_eq!(operation_name("/v1/completions"), "text_completion");
        assert_eq!(operation_name("/v1/embeddings"), "embeddings");
        assert_eq!(operation_name("/v1/messages"), "chat");
        assert_eq!(operation_name("/model/x/converse-stream"), "chat");
        assert_eq!(operation_name("/v1/models"), "other");
    }

    #[test]
    fn model_labels_are_bounded_and_well_formed() {
        let l = ModelLabels::default();
        assert_eq!(&*l.label(Some("gpt-4o")), "gpt-4o");
        assert_eq!(&*l.label(None), "none");
        assert_eq!(&*l.label(Some("bad model\"name")), "other");
        assert_eq!(&*l.label(Some(&"x".repeat(101))), "other");
        for i in 0..MAX_MODELS + 10 {
            l.label(Some(&format!("m{i}")));
        }
        assert_eq!(&*l.label(Some("brand-new")), "other");
        assert_eq!(&*l.label(Some("gpt-4o")), "gpt-4o", "known names stay");
    }
}

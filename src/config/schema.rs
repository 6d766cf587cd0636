//! The YAML schema, version 1: serde types only.
//!
//! These types are strict (`deny_unknown_fields`), carry defaults, and serialize back to
//! the effective config that `/config` shows (secrets as `[redacted]`). They never reach
//! the request path: [`super::compile`] turns them into runtime types.
//!
//! The reference for every key is `docs/config.md`; keep the two in step.

use super::secret::{PlainTemplate, SecretTemplate};
use super::units::{ByteSize, HumanDuration};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const CONFIG_VERSION: u32 = 1;

/// The whole file once every section parsed.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigFile {
    pub version: u32,
    pub listeners: Listeners,
    pub server: Server,
    pub log: Log,
    pub dns: Dns,
    pub request: RequestGuards,
    pub tenant: Tenant,
    pub providers: IndexMap<String, Provider>,
    pub routes: Vec<Route>,
}

/// Top-level keys, in the order they are documented.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "version",
    "listeners",
    "server",
    "log",
    "dns",
    "request",
    "tenant",
    "providers",
    "routes",
];

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// Base-URL mode: apps point their SDK here.
    #[serde(default = "default_reverse")]
    pub reverse: String,
    /// `/healthz`, `/readyz`, `/metrics`, `/config`.
    #[serde(default = "default_admin")]
    pub admin: String,
    /// Reserved for the HTTPS_PROXY (CONNECT) mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<serde_yaml::Value>,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            reverse: default_reverse(),
            admin: default_admin(),
            forward: None,
        }
    }
}

fn default_reverse() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin() -> String {
    "127.0.0.1:9901".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Worker threads. Default: the number of CPUs the process may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[serde(default = "default_grace")]
    pub grace_period: HumanDuration,
    /// Idle upstream connections kept for reuse, across all providers.
    #[serde(default = "default_pool_size")]
    pub upstream_pool_size: usize,
    /// Quiet time after a file change before the config is reloaded.
    #[serde(default = "default_debounce")]
    pub reload_debounce: HumanDuration,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            threads: None,
            grace_period: default_grace(),
            upstream_pool_size: default_pool_size(),
            reload_debounce: default_debounce(),
        }
    }
}

fn default_grace() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_pool_size() -> usize {
    128
}
fn default_debounce() -> HumanDuration {
    HumanDuration::from_millis(250)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// A `tracing` filter, e.g. `info` or `info,llm_sidecar=debug`. `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: default_log_level(),
            format: LogFormat::Text,
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Answers are cached for their TTL, but at least this long...
    #[serde(default = "default_min_ttl")]
    pub min_ttl: HumanDuration,
    /// ...and at most this long.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: HumanDuration,
    /// A failed lookup is remembered this long before it is tried again.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: HumanDuration,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
            negative_ttl: default_negative_ttl(),
        }
    }
}

fn default_min_ttl() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_max_ttl() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_negative_ttl() -> HumanDuration {
    HumanDuration::from_secs(2)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestGuards {
    /// Request line plus headers; larger requests get 431.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: ByteSize,
    /// Request body; larger requests get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: ByteSize,
    /// Client headers that carry credentials. They are removed from every request before
    /// the provider's own credential is added.
    #[serde(default = "default_strip_credentials")]
    pub strip_credentials: Vec<String>,
}

impl Default for RequestGuards {
    fn default() -> Self {
        RequestGuards {
            max_header_bytes: default_max_header(),
            max_body_bytes: default_max_body(),
            strip_credentials: default_strip_credentials(),
        }
    }
}

fn default_max_header() -> ByteSize {
    ByteSize::kib(64)
}
fn default_max_body() -> ByteSize {
    ByteSize::mib(32)
}
pub fn default_strip_credentials() -> Vec<String> {
    [
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// The tenant this sidecar's app belongs to.
    #[serde(default = "default_tenant_id")]
    pub id: String,
    /// Headers added to every upstream request. `{tenant}` is replaced by the tenant id.
    /// Client-sent headers with these names are removed first, so they cannot be forged.
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// More client headers to remove before forwarding.
    #[serde(default)]
    pub strip: Vec<String>,
}

impl Default for Tenant {
    fn default() -> Self {
        Tenant {
            id: default_tenant_id(),
            headers: IndexMap::new(),
            strip: Vec::new(),
        }
    }
}

fn default_tenant_id() -> String {
    "default".into()
}

/// The providers llm-sidecar knows. The kind decides the error shape the sidecar answers
/// with and provider-specific defaults (e.g. `anthropic-version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    AzureOpenai,
    Anthropic,
    Deepseek,
    Dashscope,
    Ark,
    Ollama,
    OpenaiCompatible,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub kind: ProviderKind,
    /// Scheme, host, optional port and optional base path, e.g. `https://api.openai.com/v1`.
    /// May use `${env:...}` references.
    pub base_url: PlainTemplate,
    #[serde(default)]
    pub auth: Auth,
    /// Extra headers sent to this provider (e.g. `OpenAI-Organization`). Values may be
    /// secret references and are shown as `[redacted]`.
    #[serde(default)]
    pub headers: IndexMap<String, SecretTemplate>,
    /// When a secret this provider needs is missing, disable the provider (its routes
    /// answer 503) instead of rejecting the whole config.
    #[serde(default)]
    pub optional: bool,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub pool: Pool,
    #[serde(default)]
    pub tls: Tls,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// Send no credential (e.g. a local Ollama).
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer { token: SecretTemplate },
    /// `<name>: <value>`, e.g. Anthropic's `x-api-key` or Azure's `api-key`.
    Header { name: String, value: SecretTemplate },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP connect, per address tried.
    #[serde(default = "default_connect")]
    pub connect: HumanDuration,
    /// TLS handshake, on top of `connect`.
    #[serde(default = "default_tls")]
    pub tls: HumanDuration,
    /// From the request being sent to the response headers arriving.
    #[serde(default = "default_first_byte")]
    pub first_byte: HumanDuration,
    /// Longest silence between two pieces of the response body (SSE events).
    #[serde(default = "default_idle")]
    pub idle: HumanDuration,
    /// The whole exchange, from the request to the last byte of the response.
    #[serde(default = "default_total")]
    pub total: HumanDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: default_connect(),
            tls: default_tls(),
            first_byte: default_first_byte(),
            idle: default_idle(),
            total: default_total(),
        }
    }
}

fn default_connect() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_tls() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_first_byte() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_idle() -> HumanDuration {
    HumanDuration::from_secs(120)
}
fn default_total() -> HumanDuration {
    HumanDuration::from_secs(1800)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// How long an idle upstream connection is kept for reuse.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Offer HTTP/2 by ALPN on TLS upstreams (falls back to HTTP/1.1).
    #[serde(default = "default_true")]
    pub http2: bool,
    /// Concurrent requests multiplexed on one HTTP/2 connection.
    #[serde(default = "default_h2_streams")]
    pub max_h2_streams: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle_timeout: default_idle_timeout(),
            http2: true,
            max_h2_streams: default_h2_streams(),
        }
    }
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration::from_secs(90)
}
fn default_true() -> bool {
    true
}
fn default_h2_streams() -> usize {
    100
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file with extra CA certificates to trust for this provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Trust the public web PKI (Mozilla's roots). Turn off to trust only `ca_file`.
    #[serde(default = "default_true")]
    pub public_roots: bool,
    /// Server name sent in SNI and checked against the certificate, when it differs from
    /// the host in `base_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            ca_file: None,
            public_roots: true,
            sni: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name, used in metrics and logs. Default: the provider's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    pub provider: String,
    /// Replaces the matched `path_prefix` (default: removes it). The provider's base path
    /// is always put in front.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_prefix: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Matches this path and everything below it, at a `/` boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Matches the request's Host (port ignored). `*.example.com` matches subdomains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

//! The YAML schema, version 1: serde types only.
//!
//! These types are strict (`deny_unknown_fields`), carry defaults, and serialize back to
//! the effective config that `/config` shows (secrets as `[redacted]`). They never reach
//! the request path: [`super::compile`] turns them into runtime types.
//!
//! The reference for every key is `docs/configuration.md`; keep the two in step.

use super::secret::{PlainTemplate, SecretTemplate};
use super::units::{ByteSize, HumanDuration};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const CONFIG_VERSION: u32 = 1;

/// The whole file once every section parsed.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ConfigFile {
    pub version: u32,
    pub listeners: Listeners,
    pub server: Server,
    pub log: Log,
    pub dns: Dns,
    pub request: RequestGuards,
    pub tenant: Tenant,
    pub tenants: IndexMap<String, TenantDef>,
    pub virtual_keys: Vec<VirtualKey>,
    pub forward: Forward,
    pub limits: Limits,
    pub audit: Audit,
    pub telemetry: Telemetry,
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
    "tenants",
    "virtual_keys",
    "forward",
    "limits",
    "audit",
    "telemetry",
    "providers",
    "routes",
];

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// Base-URL mode: apps point their SDK here.
    #[serde(default = "default_reverse")]
    pub reverse: String,
    /// `/healthz`, `/readyz`, `/metrics`, `/config`.
    #[serde(default = "default_admin")]
    pub admin: String,
    /// HTTPS_PROXY mode: apps set `HTTPS_PROXY=http://THIS`. Off when absent; the
    /// conventional address is 127.0.0.1:3128 (see the `forward` section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<String>,
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

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
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

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
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
    /// Fixed answers that bypass DNS: `"api.openai.com": "127.0.0.1:8443"`. A key may
    /// carry a port (`"host:443"`) to apply to that port only; a value without a port
    /// keeps the port being dialled. TLS still uses the real name (SNI, certificate
    /// check, `Host`).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub overrides: IndexMap<String, String>,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
            negative_ttl: default_negative_ttl(),
            overrides: IndexMap::new(),
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

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
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
    /// How long a client has to send a whole request head (request line and headers),
    /// counted from its first byte; a connection that takes longer is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: HumanDuration,
    /// The longest silence while the request body is being read; a longer one gets 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: HumanDuration,
}

impl Default for RequestGuards {
    fn default() -> Self {
        RequestGuards {
            max_header_bytes: default_max_header(),
            max_body_bytes: default_max_body(),
            strip_credentials: default_strip_credentials(),
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
        }
    }
}

fn default_header_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_body_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
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

/// How the sidecar knows which tenant a request belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantSource {
    /// One app per sidecar: every request is tenant `tenant.id`.
    #[default]
    Static,
    /// A trusted inbound header names the tenant (several apps share one sidecar).
    Header,
    /// The app presents a sidecar-issued key (`virtual_keys`) that maps to a tenant.
    VirtualKey,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    #[serde(default)]
    pub source: TenantSource,
    /// `static`: the tenant (may be `${env:...}`).
    #[serde(default = "default_tenant_id")]
    pub id: PlainTemplate,
    /// `header`: the inbound header that names the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// `header`: client addresses (CIDRs) allowed to name a tenant.
    #[serde(default = "default_trusted_sources")]
    pub trusted_sources: Vec<String>,
    /// Headers added to every upstream request. `{tenant}` (or `{tenant.id}`) is the tenant
    /// id, `{tenant.NAME}` one of its `attributes`. Client-sent headers with these names are
    /// removed first, so they cannot be forged.
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// More client headers to remove before forwarding.
    #[serde(default)]
    pub strip: Vec<String>,
}

impl Default for Tenant {
    fn default() -> Self {
        Tenant {
            source: TenantSource::Static,
            id: default_tenant_id(),
            header: None,
            trusted_sources: default_trusted_sources(),
            headers: IndexMap::new(),
            strip: Vec::new(),
        }
    }
}

fn default_tenant_id() -> PlainTemplate {
    // A literal without references always parses.
    PlainTemplate(super::secret::Template::literal("default"))
}

fn default_trusted_sources() -> Vec<String> {
    vec!["127.0.0.1/32".into(), "::1/128".into()]
}

/// A known tenant.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantDef {
    /// Values for `{tenant.NAME}` in tenant headers.
    #[serde(default)]
    pub attributes: IndexMap<String, String>,
    /// This tenant's own key for a provider (by provider name), used instead of the
    /// provider's keys. For `bearer`, `header` and `hmac` auth.
    #[serde(default)]
    pub provider_keys: IndexMap<String, SecretTemplate>,
}

/// A sidecar-issued key an app presents instead of a provider key.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualKey {
    pub key: SecretTemplate,
    pub tenant: String,
}

/// Request-rate, concurrency and token-budget limits.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Where counters live: `local` (the default; this process only) or a Redis URL,
    /// `redis://[user:password@]host:port[/db]`, shared by every replica. A template,
    /// so the password can come from `${env:...}` or `${file:...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<SecretTemplate>,
    /// With a shared backend: the share of a budget one sidecar leases at a time
    /// (0 < lease <= 1).
    #[serde(default = "default_lease")]
    pub lease: f64,
    /// With a shared backend: what happens once the local lease is spent while the
    /// backend cannot be reached.
    #[serde(default)]
    pub on_backend_failure: BackendFailure,
    /// With a shared backend: how long one backend call may take.
    #[serde(default = "default_backend_timeout")]
    pub backend_timeout: HumanDuration,
    /// With a shared backend: prefix of every key the sidecar writes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default)]
    pub rules: Vec<LimitRule>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            backend: None,
            lease: default_lease(),
            on_backend_failure: BackendFailure::default(),
            backend_timeout: default_backend_timeout(),
            key_prefix: default_key_prefix(),
            rules: Vec::new(),
        }
    }
}

fn default_lease() -> f64 {
    0.1
}

fn default_backend_timeout() -> HumanDuration {
    HumanDuration::from_millis(250)
}

fn default_key_prefix() -> String {
    "llm-sidecar:".into()
}

/// What a shared limit does when its backend is unreachable and the local lease is spent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendFailure {
    /// Admit (fail open): availability over exactness.
    #[default]
    Allow,
    /// Refuse with 503 `limits_backend_unavailable` (fail closed).
    Deny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    Tenant,
    Route,
    Provider,
    /// One counter per provider key (pool key, the provider's one credential, or a
    /// tenant's own key). Checked per attempt, once the key is picked: a key at its
    /// limit is skipped for the next one.
    Key,
}

/// One limit. `scope` says what gets its own counter: `[tenant]` is one per tenant,
/// `[tenant, route]` one per tenant and route, `[]` one shared by all it matches.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    pub name: String,
    #[serde(default)]
    pub scope: Vec<LimitScope>,
    /// Only requests of these tenants / routes / providers (empty: all).
    #[serde(default, rename = "match")]
    pub matcher: LimitMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<RequestLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenLimit>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitMatch {
    #[serde(default)]
    pub tenants: Vec<String>,
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default)]
    pub providers: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestLimit {
    /// `"10/s"`, `"600/m"`, `"10000/h"`.
    pub rate: String,
    /// Requests that may come at once (default: one second's worth, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    pub max: u32,
    /// Requests that may wait for a slot (0: refuse at once).
    #[serde(default)]
    pub queue: u32,
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: HumanDuration,
}

fn default_queue_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenCount {
    #[default]
    Total,
    Input,
    Output,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenAccounting {
    /// Reserve an estimate at admission, reconcile with the real usage at the end.
    #[default]
    Reserve,
    /// Admit while the budget is not spent, charge at the end (what most gateways do;
    /// it overshoots under concurrency — for comparison).
    After,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenLimit {
    /// Tokens per `per`.
    pub limit: u64,
    pub per: HumanDuration,
    #[serde(default)]
    pub count: TokenCount,
    /// Output tokens reserved for a request that names no `max_tokens`
    /// (`max_completion_tokens`, `max_output_tokens`).
    #[serde(default = "default_output_reserve")]
    pub default_max_tokens: u64,
    /// Lower the request's `max_tokens` to what is left of the budget instead of
    /// refusing it (while any is left).
    #[serde(default)]
    pub clamp_max_tokens: bool,
    #[serde(default)]
    pub accounting: TokenAccounting,
}

fn default_output_reserve() -> u64 {
    1024
}

/// The HTTPS_PROXY (forward proxy) mode: which CONNECT targets are intercepted, tunnelled
/// or refused, and the local CA that signs intercepted hosts' certificates.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// The CA made by `llm-sidecar ca init`. Needed when `listeners.forward` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<ForwardCa>,
    /// Lifetime of the leaf certificates minted for intercepted hosts.
    #[serde(default = "default_leaf_validity")]
    pub leaf_validity: HumanDuration,
    /// Ports a CONNECT (or an `http://` absolute-form request) may name.
    #[serde(default = "default_forward_ports")]
    pub ports: Vec<u16>,
    /// Hosts tunnelled byte for byte, never decrypted: `"*.github.com"`, `"example.com"`,
    /// or `"example.com:8443"` to allow that one port instead of `ports`.
    #[serde(default)]
    pub passthrough: Vec<String>,
    /// Destinations the address guard would refuse (private, loopback, link-local, ...)
    /// that may be reached anyway: host names, IP addresses or CIDRs.
    #[serde(default)]
    pub allow_private: Vec<String>,
    #[serde(default)]
    pub tunnel: TunnelSettings,
    /// `Proxy-Authorization: Basic` users, each mapped to a tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_auth: Option<ProxyAuth>,
}

impl Default for Forward {
    fn default() -> Self {
        Forward {
            ca: None,
            leaf_validity: default_leaf_validity(),
            ports: default_forward_ports(),
            passthrough: Vec::new(),
            allow_private: Vec::new(),
            tunnel: TunnelSettings::default(),
            proxy_auth: None,
        }
    }
}

fn default_leaf_validity() -> HumanDuration {
    HumanDuration::from_secs(24 * 3600)
}
fn default_forward_ports() -> Vec<u16> {
    vec![443]
}

/// Where the interception CA's files are. `dir` holds the files `ca init` writes; the
/// `*_file` keys override single files.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardCa {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// With `dir` set and none of its CA files there, `llm-sidecar run` creates the CA on
    /// its first start, as `llm-sidecar ca init` would (name-constrained to the routes'
    /// hosts). `false`: start-up fails instead, e.g. for a CA mounted from a Secret.
    #[serde(default = "default_true")]
    pub create_if_missing: bool,
    /// The signing intermediate's certificate (default `DIR/intermediate.pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Its private key (default `DIR/intermediate.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The root clients trust (default `DIR/ca.pem`); used to check the chain at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_file: Option<PathBuf>,
}

impl Default for ForwardCa {
    fn default() -> Self {
        ForwardCa {
            dir: None,
            create_if_missing: true,
            cert_file: None,
            key_file: None,
            root_file: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TunnelSettings {
    /// Connecting to a pass-through host.
    #[serde(default = "default_tunnel_connect")]
    pub connect: HumanDuration,
    /// A tunnel with no bytes either way for this long is closed.
    #[serde(default = "default_tunnel_idle")]
    pub idle: HumanDuration,
    /// A tunnel is closed after this long, busy or not.
    #[serde(default = "default_tunnel_total")]
    pub total: HumanDuration,
}

impl Default for TunnelSettings {
    fn default() -> Self {
        TunnelSettings {
            connect: default_tunnel_connect(),
            idle: default_tunnel_idle(),
            total: default_tunnel_total(),
        }
    }
}

fn default_tunnel_connect() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_tunnel_idle() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_tunnel_total() -> HumanDuration {
    HumanDuration::from_secs(3600)
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyAuth {
    /// Refuse (407) clients without valid proxy credentials. When false, a client without
    /// `Proxy-Authorization` gets the usual tenant resolution; wrong credentials are
    /// still refused.
    #[serde(default = "default_true")]
    pub required: bool,
    pub users: Vec<ProxyUser>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyUser {
    pub user: String,
    pub password: SecretTemplate,
    /// The tenant this user's requests belong to.
    pub tenant: String,
}

/// The providers llm-sidecar knows. The kind decides the error shape the sidecar answers
/// with and provider-specific defaults (e.g. `anthropic-version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    AzureOpenai,
    Anthropic,
    Deepseek,
    Dashscope,
    Ark,
    Ollama,
    Bedrock,
    VertexAi,
    OpenaiCompatible,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
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
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// The provider endpoint's circuit breaker.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Opens after this many failures in a row (0: off).
    #[serde(default = "default_breaker_consecutive")]
    pub consecutive_failures: u32,
    /// ...or when at least this share of the requests in `window` failed (0: off)...
    #[serde(default = "default_breaker_ratio")]
    pub failure_ratio: f64,
    /// ...counting only windows with at least this many requests.
    #[serde(default = "default_breaker_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_breaker_window")]
    pub window: HumanDuration,
    /// How long it stays open before letting probe requests through.
    #[serde(default = "default_breaker_cooldown")]
    pub cooldown: HumanDuration,
    /// Probe requests at a time while half-open.
    #[serde(default = "default_breaker_probes")]
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            consecutive_failures: default_breaker_consecutive(),
            failure_ratio: default_breaker_ratio(),
            min_requests: default_breaker_min_requests(),
            window: default_breaker_window(),
            cooldown: default_breaker_cooldown(),
            half_open_probes: default_breaker_probes(),
        }
    }
}

fn default_breaker_consecutive() -> u32 {
    5
}
fn default_breaker_ratio() -> f64 {
    0.5
}
fn default_breaker_min_requests() -> u32 {
    20
}
fn default_breaker_window() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_breaker_cooldown() -> HumanDuration {
    HumanDuration::from_secs(15)
}
fn default_breaker_probes() -> u32 {
    1
}

/// A route's retries.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per target, the first included (1: never retry).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Backoff before retry n: random between 0 and min(backoff_max, backoff × 2^(n-1)).
    #[serde(default = "default_backoff")]
    pub backoff: HumanDuration,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: HumanDuration,
    /// A provider's `Retry-After` up to this long is waited for; a longer one ends the
    /// retries (the client gets the provider's answer).
    #[serde(default = "default_retry_after_max")]
    pub retry_after_max: HumanDuration,
    /// Retries may add at most this share of the route's requests...
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    /// ...plus this many per second.
    #[serde(default = "default_budget_floor")]
    pub budget_min_per_second: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: default_max_attempts(),
            backoff: default_backoff(),
            backoff_max: default_backoff_max(),
            retry_after_max: default_retry_after_max(),
            budget_ratio: default_budget_ratio(),
            budget_min_per_second: default_budget_floor(),
        }
    }
}

fn default_max_attempts() -> u32 {
    2
}
fn default_backoff() -> HumanDuration {
    HumanDuration::from_millis(100)
}
fn default_backoff_max() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_retry_after_max() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_floor() -> u32 {
    5
}

/// The API shape a route's clients speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FrontApi {
    /// OpenAI Chat Completions: `POST …/chat/completions`.
    Openai,
    /// Anthropic Messages: `POST …/v1/messages`.
    Anthropic,
}

fn default_translated_max_tokens() -> u64 {
    4096
}

/// A target to use when the route's provider fails or its breaker is open.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbackTarget {
    pub provider: String,
    /// Replaces `model` in the JSON request body for this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The client's model names and this target's name for each (`gpt-4o:
    /// claude-sonnet-4-5`); a name not in the map is sent as the client wrote it.
    /// `model`, when set, wins.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub models: IndexMap<String, String>,
    /// This target's own time limits, in place of its provider's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TargetTimeouts>,
}

/// A route target's time limits; each one left out is its provider's.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetTimeouts {
    /// From the request being sent to the response headers arriving, per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte: Option<HumanDuration>,
    /// Longest silence between two pieces of the response body, per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<HumanDuration>,
    /// All of this target's attempts, from its first request to the last byte of its
    /// answer (for the route's provider: the whole exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<HumanDuration>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// Send no credential (e.g. a local Ollama).
    #[default]
    None,
    /// `Authorization: Bearer <token>`: one `token`, or a pool of `keys`.
    Bearer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<SecretTemplate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keys: Option<Vec<PoolKey>>,
        #[serde(default)]
        strategy: KeyStrategy,
        #[serde(default = "default_cooldown")]
        cooldown: HumanDuration,
    },
    /// `<name>: <value>` (Anthropic's `x-api-key`, Azure's `api-key`): one `value`, or a
    /// pool of `keys`.
    Header {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<SecretTemplate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keys: Option<Vec<PoolKey>>,
        #[serde(default)]
        strategy: KeyStrategy,
        #[serde(default = "default_cooldown")]
        cooldown: HumanDuration,
    },
    /// HMAC-SHA256 request signature (see `docs/configuration.md#hmac`): one `key_id` + `secret`,
    /// or a pool of `keys` (each with its `key_id`).
    Hmac {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<SecretTemplate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keys: Option<Vec<PoolKey>>,
        #[serde(default)]
        strategy: KeyStrategy,
        #[serde(default = "default_cooldown")]
        cooldown: HumanDuration,
        #[serde(default)]
        headers: HmacHeaderNames,
        #[serde(default)]
        timestamp_unit: TimestampUnit,
    },
    /// AWS Signature Version 4 (Amazon Bedrock).
    AwsSigv4 {
        region: String,
        #[serde(default = "default_aws_service")]
        service: String,
        #[serde(default)]
        credentials: AwsCredentials,
    },
    /// OAuth2 access tokens (client credentials, or a Google service account).
    Oauth2 {
        flow: OAuthFlow,
        /// Token endpoint. Default for `google_service_account`: the key file's `token_uri`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<PlainTemplate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_secret: Option<SecretTemplate>,
        /// `google_service_account`: the key file's JSON, usually `${file:/path/key.json}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service_account: Option<SecretTemplate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        #[serde(default)]
        client_auth: OAuthClientAuth,
        /// More form parameters for the token request (e.g. `audience`).
        #[serde(default)]
        extra_params: IndexMap<String, String>,
        /// Refresh this long before the token expires.
        #[serde(default = "default_refresh_before")]
        refresh_before: HumanDuration,
        /// Extra CA for the token endpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
    },
}

/// One key of a pool.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolKey {
    /// Used in metrics and logs (never the key itself).
    pub name: String,
    pub key: SecretTemplate,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// `hmac` only: the id sent in the key-id header. Default: the key's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStrategy {
    #[default]
    RoundRobin,
    Weighted,
}

fn default_cooldown() -> HumanDuration {
    HumanDuration::from_secs(30)
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacHeaderNames {
    #[serde(default = "default_sig_header")]
    pub signature: String,
    #[serde(default = "default_ts_header")]
    pub timestamp: String,
    #[serde(default = "default_nonce_header")]
    pub nonce: String,
    #[serde(default = "default_key_id_header")]
    pub key_id: String,
}

impl Default for HmacHeaderNames {
    fn default() -> Self {
        HmacHeaderNames {
            signature: default_sig_header(),
            timestamp: default_ts_header(),
            nonce: default_nonce_header(),
            key_id: default_key_id_header(),
        }
    }
}

fn default_sig_header() -> String {
    "X-Signature".into()
}
fn default_ts_header() -> String {
    "X-Timestamp".into()
}
fn default_nonce_header() -> String {
    "X-Nonce".into()
}
fn default_key_id_header() -> String {
    "X-Key-Id".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimestampUnit {
    #[default]
    Ms,
    S,
}

fn default_aws_service() -> String {
    "bedrock".into()
}

/// Where AWS credentials come from. Read again on every reload.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "from", rename_all = "snake_case", deny_unknown_fields)]
pub enum AwsCredentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    #[default]
    Env,
    Static {
        access_key_id: PlainTemplate,
        secret_access_key: SecretTemplate,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_token: Option<SecretTemplate>,
    },
    /// An AWS shared credentials file.
    File {
        path: PathBuf,
        #[serde(default = "default_profile")]
        profile: String,
    },
}

fn default_profile() -> String {
    "default".into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OAuthFlow {
    ClientCredentials,
    GoogleServiceAccount,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OAuthClientAuth {
    #[default]
    Basic,
    Body,
}

fn default_refresh_before() -> HumanDuration {
    HumanDuration::from_secs(60)
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
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

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
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

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
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

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name, used in metrics and logs. Default: the provider's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    pub provider: String,
    /// The API shape this route's clients speak. When set, each target (the provider and
    /// every fallback) that speaks another shape natively gets the request translated
    /// to its own API and the answer translated back, JSON and SSE
    /// (docs/unified-api.md). A target of the same shape is passed through untouched.
    /// Absent: every request is forwarded as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<FrontApi>,
    /// Replaces `model` in the request for the route's provider (a fallback has its
    /// own `model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The client's model names and the route's provider's name for each; a name not
    /// in the map is sent as the client wrote it. `model`, when set, wins.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub models: IndexMap<String, String>,
    /// Time limits for the route's provider on this route, in place of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TargetTimeouts>,
    /// Output cap sent to a provider that requires one (Anthropic) when the client set
    /// none, on translated requests.
    #[serde(default = "default_translated_max_tokens")]
    pub default_max_tokens: u64,
    /// Replaces the matched `path_prefix` (default: removes it). The provider's base path
    /// is always put in front.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_prefix: Option<String>,
    /// Send the request's path upstream unchanged (no base path, no prefix rewrite), for
    /// apps that already use the provider's own paths. Default: true when `match.host`
    /// names the provider's own host (an intercepted provider), else false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_path: Option<bool>,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Tried in order when the provider's attempts are used up or its breaker is open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<FallbackTarget>,
    /// Write this route's request and response bodies into the audit log (redacted,
    /// capped). Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_bodies: Option<AuditBodies>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditBodies {
    #[serde(default = "yes")]
    pub request: bool,
    #[serde(default = "yes")]
    pub response: bool,
    /// Each body is cut after this many bytes (after redaction).
    #[serde(default = "default_audit_body")]
    pub max_bytes: ByteSize,
}

fn yes() -> bool {
    true
}

fn default_audit_body() -> ByteSize {
    ByteSize::kib(16)
}

/// Where audit records go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutput {
    #[default]
    Off,
    Stdout,
    File,
}

/// What happens to a record when the audit queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditWhenFull {
    /// The new record is dropped (and counted).
    #[default]
    DropNew,
    /// The oldest queued record is dropped (and counted) to make room.
    DropOldest,
}

/// The audit log: one JSON line per request, redacted and hash-chained.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    #[serde(default)]
    pub output: AuditOutput,
    /// With `output: file`: the file records are appended to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// With `output: file`: the file is rotated (`path.1`, `path.2`, ...) at this size.
    #[serde(default = "default_audit_max_size")]
    pub max_size: ByteSize,
    /// With `output: file`: rotated files kept.
    #[serde(default = "default_audit_max_files")]
    pub max_files: usize,
    /// Records waiting to be written; past this, `when_full` applies.
    #[serde(default = "default_audit_queue")]
    pub queue: usize,
    #[serde(default)]
    pub when_full: AuditWhenFull,
    #[serde(default)]
    pub redact: Redact,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            output: AuditOutput::Off,
            path: None,
            max_size: default_audit_max_size(),
            max_files: default_audit_max_files(),
            queue: default_audit_queue(),
            when_full: AuditWhenFull::DropNew,
            redact: Redact::default(),
        }
    }
}

fn default_audit_max_size() -> ByteSize {
    ByteSize::mib(100)
}
fn default_audit_max_files() -> usize {
    5
}
fn default_audit_queue() -> usize {
    8192
}

/// Redaction of what the audit log writes. Every configured secret is always masked.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redact {
    /// Built-in rules in use: api_key, bearer, email, phone, cn_mobile, cn_id, card.
    #[serde(default = "default_builtins")]
    pub builtins: Vec<String>,
    /// Extra regex rules; a rule without `pattern` changes the mask of the built-in it
    /// names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RedactRule>,
    /// Fields of JSON bodies to mask, e.g. `$.user` or `$.messages[*].name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json_paths: Vec<RedactPath>,
}

impl Default for Redact {
    fn default() -> Self {
        Redact {
            builtins: default_builtins(),
            rules: Vec::new(),
            json_paths: Vec::new(),
        }
    }
}

fn default_builtins() -> Vec<String> {
    crate::observability::redact::builtin_names()
        .map(String::from)
        .collect()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MaskStyle {
    /// `[REDACTED:<rule>]`
    #[default]
    Full,
    /// Keeps `keep_prefix` and `keep_suffix` characters: `138****5678`.
    Partial,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedactRule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default)]
    pub mask: MaskStyle,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_prefix: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_suffix: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedactPath {
    pub path: String,
    #[serde(default)]
    pub mask: MaskStyle,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_prefix: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_suffix: Option<usize>,
}

/// OTLP trace export: one CLIENT span per upstream attempt.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Spans waiting for export; past this, new spans are dropped (and counted).
    #[serde(default = "default_span_queue")]
    pub queue: usize,
    /// Spans sent in one export request.
    #[serde(default = "default_span_batch")]
    pub batch: usize,
    /// How long spans may wait before a batch is sent.
    #[serde(default = "default_span_delay")]
    pub delay: HumanDuration,
    /// One export request may take this long.
    #[serde(default = "default_span_timeout")]
    pub timeout: HumanDuration,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            otlp_endpoint: None,
            service_name: default_service_name(),
            queue: default_span_queue(),
            batch: default_span_batch(),
            delay: default_span_delay(),
            timeout: default_span_timeout(),
        }
    }
}

fn default_service_name() -> String {
    "llm-sidecar".into()
}
fn default_span_queue() -> usize {
    2048
}
fn default_span_batch() -> usize {
    512
}
fn default_span_delay() -> HumanDuration {
    HumanDuration::from_secs(1)
}
fn default_span_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Matches this path and everything below it, at a `/` boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Matches the request's Host (port ignored). `*.example.com` matches subdomains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// The config file's JSON Schema (draft 2020-12), generated from the types above: every
/// key, its type, default and description. `llm-sidecar schema` prints it for editors and
/// CI; `docs/configuration.md` is checked against it.
pub fn json_schema() -> serde_json::Value {
    let mut s = schemars::schema_for!(ConfigFile).to_value();
    s["title"] = "llm-sidecar configuration".into();
    // Every section has defaults; only the version must be written.
    s["required"] = serde_json::json!(["version"]);
    // The parser refuses unknown top-level keys too.
    s["additionalProperties"] = false.into();
    s["properties"]["version"]["const"] = CONFIG_VERSION.into();
    s
}

//! [`ConfigFile`] → [`Snapshot`]: validation plus everything that can be computed before a
//! request arrives (resolved secrets, parsed URLs, signers, header values, trust lists,
//! metric handles, the redacted `/config` document).
//!
//! Every problem is recorded with its path and loading goes on, so the caller gets the
//! complete list. Nothing here logs a secret; error messages name references only.

use super::errors::{did_you_mean, ConfigErrors};
use super::schema::{self, ConfigFile, ProviderKind};
use super::secret::EnvLookup;
use crate::auth::compile::{AuthCompiler, AuthMetrics};
use crate::auth::Auth;
use crate::forward::settings::ForwardSettings;
use crate::limits::compile::{LimitCompiler, LimitMetrics, ProviderKeys, Scopes};
use crate::observability::{self, metrics::Metrics};
use crate::proxy::errors::ErrorStyle;
use crate::routing;
use crate::tenant::Tenants;
use crate::upstream::dns::{DnsRegistry, DnsSettings, Overrides};
use crate::upstream::{self, trust, PeerSettings, Provider, Timeouts};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use indexmap::IndexMap;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::forward::settings::intercepted_domains;

pub use super::build::{Build, LoadMode};

/// What a load needs from the running process.
pub struct LoadContext<'a> {
    pub env: EnvLookup<'a>,
    pub mode: LoadMode,
    pub dns: &'a DnsRegistry,
    /// Circuit breakers survive reloads.
    pub breakers: &'a crate::resilience::breaker::BreakerRegistry,
    /// So do limit counters.
    pub limits: &'a crate::limits::LimitRegistry,
    pub metrics: &'a Metrics,
}

/// Settings that only take effect at start-up.
pub use crate::observability::audit::{AuditSettings, AuditSink, BodyCapture};
pub use crate::observability::otlp::TelemetrySettings;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupSettings {
    pub reverse: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTPS_PROXY listener, when on.
    pub forward: Option<SocketAddr>,
    pub threads: usize,
    pub upstream_pool_size: usize,
    pub log_level: String,
    pub log_format: schema::LogFormat,
    /// The audit sink (None: off).
    pub audit: Option<AuditSettings>,
    /// OTLP trace export (None: off).
    pub telemetry: Option<TelemetrySettings>,
}

#[derive(Clone, Copy, Debug)]
pub struct Guards {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// A route's provider: ready to serve, or disabled because an `optional` provider's
/// secret is missing.
#[derive(Clone, Debug)]
pub enum Target {
    Ready(Arc<Provider>),
    Disabled { reason: Arc<str>, style: ErrorStyle },
}

/// A fallback of a route: another provider (and model) to try.
#[derive(Debug)]
pub struct FallbackPlan {
    pub provider: Arc<str>,
    pub target: Target,
    /// The provider's base path + the route's rewrite prefix.
    pub mount: String,
    /// The model this target gets.
    pub models: Models,
    /// This target's own time limits, over its provider's.
    pub timeouts: TargetTimeouts,
    /// How this target's requests and answers are translated (None: passed through).
    pub translation: Option<Arc<Translation>>,
}

/// The model a route target gets: a fixed one, else the client's mapped, else the
/// client's own.
#[derive(Debug, Default)]
pub struct Models {
    pub fixed: Option<Arc<str>>,
    /// Client name → target name, in config order (a handful: a scan beats hashing).
    pub map: Vec<(Box<str>, Arc<str>)>,
}

impl Models {
    /// The model to write into the request, given the client's; None: leave it.
    pub fn pick(&self, requested: Option<&str>) -> Option<Arc<str>> {
        if let Some(f) = &self.fixed {
            return Some(f.clone());
        }
        let r = requested?;
        self.map
            .iter()
            .find(|(from, _)| &**from == r)
            .map(|(_, to)| to.clone())
    }

    /// The client-facing names this target serves: the map's names, or its fixed model.
    pub fn listed(&self) -> impl Iterator<Item = &str> {
        self.map
            .iter()
            .map(|(from, _)| &**from)
            .chain(self.fixed.as_deref().filter(|_| self.map.is_empty()))
    }
}

/// A route target's time limits; None: its provider's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetTimeouts {
    pub first_byte: Option<std::time::Duration>,
    pub idle: Option<std::time::Duration>,
    pub total: Option<std::time::Duration>,
}

impl TargetTimeouts {
    /// The provider's timeouts with this target's in place.
    pub fn over(&self, t: &Timeouts) -> Timeouts {
        Timeouts {
            first_byte: self.first_byte.unwrap_or(t.first_byte),
            idle: self.idle.unwrap_or(t.idle),
            total: self.total.unwrap_or(t.total),
            ..*t
        }
    }
}

/// A target of a route that declares its clients' API: what its attempts translate
/// (nothing when `front == target`), and where the request goes.
#[derive(Debug)]
pub struct Translation {
    pub front: crate::translate::Api,
    pub target: crate::translate::Api,
    /// The target's own endpoint: its base path and the native API's path.
    pub endpoint: Endpoint,
    /// The target's Responses API endpoint, when it has one (OpenAI, Azure OpenAI):
    /// a Responses request goes there untranslated.
    pub responses: Option<http::Uri>,
    pub options: crate::translate::Options,
}

/// Where a translated request goes on its target.
#[derive(Debug)]
pub enum Endpoint {
    /// One path for every request (Anthropic, OpenAI-shaped kinds).
    Fixed(http::Uri),
    /// The path names the model and says whether the answer streams (Bedrock Converse,
    /// Gemini): [`crate::translate::Api::model_path`] under this base path.
    PerModel { base: String },
}

impl Endpoint {
    /// The path of a fixed endpoint. Targets of a client-facing API (the only ones an
    /// untranslated request goes to) have one.
    pub fn fixed(&self) -> &http::Uri {
        static ROOT: std::sync::OnceLock<http::Uri> = std::sync::OnceLock::new();
        match self {
            Endpoint::Fixed(u) => u,
            Endpoint::PerModel { .. } => ROOT.get_or_init(|| http::Uri::from_static("/")),
        }
    }
}

/// `GET …/models` in the front's API: each `(model, provider)` once, in order.
fn models_list(front: crate::translate::Api, names: &[(&str, &str)]) -> bytes::Bytes {
    use serde_json::json;
    let v = match front {
        crate::translate::Api::AnthropicMessages => json!({
            "data": names.iter().map(|(id, _)| json!({
                "type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z",
            })).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": names.first().map(|n| n.0),
            "last_id": names.last().map(|n| n.0),
        }),
        _ => json!({
            "object": "list",
            "data": names.iter().map(|(id, provider)| json!({
                "id": id, "object": "model", "created": 0, "owned_by": provider,
            })).collect::<Vec<_>>(),
        }),
    };
    bytes::Bytes::from(v.to_string())
}

/// The API a provider kind speaks natively, and the path of its chat endpoint under the
/// base URL (for Bedrock and Vertex AI the base path under which the model's path goes).
fn native_api(kind: ProviderKind, base_path: &str) -> (crate::translate::Api, String) {
    use crate::translate::Api;
    let v1 = |rest: &str| {
        if base_path.ends_with("/v1") {
            format!("{base_path}{rest}")
        } else {
            format!("{base_path}/v1{rest}")
        }
    };
    match kind {
        ProviderKind::Anthropic => (Api::AnthropicMessages, v1("/messages")),
        ProviderKind::Ollama => (Api::OpenAiChat, v1("/chat/completions")),
        ProviderKind::Openai
        | ProviderKind::Deepseek
        | ProviderKind::Dashscope
        | ProviderKind::Ark
        | ProviderKind::AzureOpenai
        | ProviderKind::OpenaiCompatible => {
            (Api::OpenAiChat, format!("{base_path}/chat/completions"))
        }
        ProviderKind::Bedrock => (
            Api::BedrockConverse,
            base_path.trim_end_matches('/').to_string(),
        ),
        ProviderKind::VertexAi => (Api::Gemini, base_path.trim_end_matches('/').to_string()),
    }
}

/// What a matched request is sent to, and what happens when that fails.
#[derive(Debug)]
pub struct RouteAction {
    pub target: Target,
    pub plan: RoutePlan,
    /// The API the route's clients speak (`api:`), when it translates.
    pub front: Option<crate::translate::Api>,
    /// The model the route's provider gets.
    pub models: Models,
    /// The route's provider's time limits on this route, over its own.
    pub timeouts: TargetTimeouts,
    /// A translating route's answer to `GET …/models`, in its clients' API: the models
    /// its targets name (None: they name none, and the request goes on as any other).
    pub models_list: Option<bytes::Bytes>,
    /// How the route's provider is reached when it speaks another API.
    pub translation: Option<Arc<Translation>>,
}

/// A compiled route: its matcher and path mapping, its target and its plan.
pub type Route = routing::Route<RouteAction>;
pub type RouteTable = routing::RouteTable<RouteAction>;

/// What a route does when an attempt fails.
#[derive(Debug)]
pub struct RoutePlan {
    pub retry: crate::resilience::RetryPolicy,
    pub fallbacks: Vec<FallbackPlan>,
    /// `[i]`: a fallback at position `i` or later is ready (for i = 0..=fallbacks.len()).
    ready_after: Box<[bool]>,
    /// Bodies written into the audit log (None: none).
    pub audit_bodies: Option<BodyCapture>,
}

impl RoutePlan {
    /// Whether a fallback after target `target` (0: the route's provider) can take over.
    pub fn ready_after(&self, target: usize) -> bool {
        self.ready_after.get(target).copied().unwrap_or(false)
    }
}

/// One immutable, fully compiled config. Requests hold an `Arc` to the snapshot they
/// started with until they finish.
pub struct Snapshot {
    /// sha256 of the file, first 16 hex digits (shown in metrics and logs).
    pub hash: String,
    /// sha256 over the file and every resolved secret: tells a real change from a no-op
    /// reload. Never exposed.
    pub fingerprint: [u8; 32],
    pub startup: StartupSettings,
    pub grace_period: Duration,
    pub reload_debounce: Duration,
    pub guards: Guards,
    /// The routes, in order, each with its target and plan.
    pub routes: RouteTable,
    /// `limits.rules`, with their counters.
    pub limits: crate::limits::Limits,
    pub providers: IndexMap<String, Target>,
    pub tenants: Tenants,
    /// The HTTPS_PROXY mode's rules and CA.
    pub forward: Arc<ForwardSettings>,
    /// The audit log's redaction rules, with every secret of this config (None only
    /// when they did not compile, and then the load fails).
    pub redactor: Option<Arc<crate::observability::redact::Redactor>>,
    /// `dns.overrides`.
    pub dns_overrides: crate::upstream::dns::Overrides,
    /// The effective config as JSON, secrets shown as `[redacted]`.
    pub effective: Bytes,
    /// Secret and CA files read by this load; their directories are watched too.
    pub files: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("hash", &self.hash)
            .field("routes", &self.routes.len())
            .field("providers", &self.providers.len())
            .finish_non_exhaustive()
    }
}

/// Reads and compiles a config file.
pub fn load_file(path: &Path, ctx: &LoadContext<'_>) -> Result<Snapshot, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut errs = ConfigErrors::default();
        errs.push(
            "",
            format!("cannot read config file {}: {}", path.display(), e.kind()),
        );
        errs
    })?;
    compile(&text, ctx)
}

pub fn compile(text: &str, ctx: &LoadContext<'_>) -> Result<Snapshot, ConfigErrors> {
    let file = super::parse::parse(text)?;
    Compiler::new(ctx, text).run(file)
}

struct Compiler<'a> {
    ctx: &'a LoadContext<'a>,
    text_hash: String,
    /// Errors, warnings, secrets and files so far; the parts' compile steps take it.
    b: Build<'a>,
    /// `dns.overrides`, needed while compiling providers.
    overrides: crate::upstream::dns::Overrides,
}

impl<'a> std::ops::Deref for Compiler<'a> {
    type Target = Build<'a>;
    fn deref(&self) -> &Build<'a> {
        &self.b
    }
}

impl std::ops::DerefMut for Compiler<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.b
    }
}

impl<'a> Compiler<'a> {
    fn new(ctx: &'a LoadContext<'a>, text: &str) -> Compiler<'a> {
        Compiler {
            ctx,
            text_hash: hex::encode(&Sha256::digest(text.as_bytes())[..8]),
            b: Build::new(ctx.env, ctx.mode, text),
            overrides: Default::default(),
        }
    }

    fn run(mut self, file: ConfigFile) -> Result<Snapshot, ConfigErrors> {
        let startup = self.startup(&file);
        let guards = self.guards(&file.request);
        let credential_headers =
            self.header_names("request.strip_credentials", &file.request.strip_credentials);
        let (tenants, tenant_defs) = Tenants::compile(&mut self.b, &file);
        let dns = self.dns(&file.dns);
        self.overrides = self.overrides(&file.dns);

        let mut providers = IndexMap::new();
        for (name, p) in &file.providers {
            let target = self.provider(name, p, dns, &credential_headers, &tenants, &tenant_defs);
            providers.insert(name.clone(), target);
        }
        for (id, def) in &file.tenants {
            for (provider, _) in &def.provider_keys {
                if !file.providers.contains_key(provider) {
                    let hint = did_you_mean(provider, file.providers.keys().map(String::as_str))
                        .map(|s| format!("; did you mean \"{s}\"?"))
                        .unwrap_or_default();
                    self.errs.push(
                        format!("tenants.{id}.provider_keys.{provider}"),
                        format!("unknown provider \"{provider}\"{hint}"),
                    );
                }
            }
        }

        let routes = self.routes(&file, &providers);
        let limits = self.limits(&file, &routes, &providers, &tenants);
        let forward = ForwardSettings::compile(
            &mut self.b,
            &file.forward,
            routes.iter().filter_map(|r| r.host().cloned()).collect(),
            &tenants,
            startup.as_ref().is_some_and(|s| s.forward.is_some()),
            self.ctx.metrics.forward(),
        );

        let (audit, redactor) = observability::compile::audit(&mut self.b, &file);
        let telemetry = observability::compile::telemetry(&mut self.b, &file.telemetry);
        let startup = startup.map(|s| StartupSettings {
            audit,
            telemetry,
            ..s
        });

        for (name, _) in &file.providers {
            if !file.routes.iter().any(|r| &r.provider == name) {
                self.warnings
                    .push(format!("providers.{name}: no route uses this provider"));
            }
        }

        if !self.unresolved.is_empty() {
            let n = self.unresolved.len();
            let warning = format!(
                "not resolved (--no-secrets): {n} reference(s), at {}",
                self.unresolved.join(", ")
            );
            self.warnings.push(warning);
        }

        let effective = match serde_json::to_vec_pretty(&file) {
            Ok(v) => Bytes::from(v),
            Err(e) => {
                self.errs
                    .push("", format!("cannot render effective config: {e}"));
                Bytes::new()
            }
        };

        let Compiler {
            text_hash,
            b:
                Build {
                    errs,
                    warnings,
                    files,
                    fingerprint,
                    ..
                },
            overrides: dns_overrides,
            ..
        } = self;
        let fingerprint: [u8; 32] = fingerprint.finalize().into();
        let startup = match startup {
            Some(s) => s,
            None => return Err(errs),
        };
        errs.into_result(Snapshot {
            hash: text_hash,
            fingerprint,
            startup,
            grace_period: file.server.grace_period.get(),
            reload_debounce: file.server.reload_debounce.get(),
            guards,
            routes,
            limits,
            providers,
            tenants,
            forward,
            redactor,
            dns_overrides,
            effective,
            files,
            warnings,
        })
    }

    fn startup(&mut self, file: &ConfigFile) -> Option<StartupSettings> {
        let reverse = self.addr("listeners.reverse", &file.listeners.reverse);
        let admin = self.addr("listeners.admin", &file.listeners.admin);
        let forward = file
            .listeners
            .forward
            .as_ref()
            .map(|f| self.addr("listeners.forward", f));
        let listeners = [
            ("listeners.reverse", reverse),
            ("listeners.admin", admin),
            ("listeners.forward", forward.flatten()),
        ];
        for (i, (name, a)) in listeners.iter().enumerate() {
            for (earlier, e) in &listeners[..i] {
                if let (Some(a), Some(e)) = (a, e) {
                    if a == e && a.port() != 0 {
                        self.errs
                            .push(*name, format!("same address as {earlier} ({a})"));
                    }
                }
            }
        }
        let threads = match file.server.threads {
            Some(0) => {
                self.errs.push("server.threads", "must be at least 1");
                1
            }
            Some(n) if n > 256 => {
                self.errs.push(
                    "server.threads",
                    format!("{n} is more than the supported 256"),
                );
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if file.server.grace_period.get() > Duration::from_secs(3600) {
            self.errs.push("server.grace_period", "must be at most 1h");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&file.log.level) {
            self.errs.push(
                "log.level",
                format!("invalid filter \"{}\": {e}", file.log.level),
            );
        }
        Some(StartupSettings {
            reverse: reverse?,
            admin: admin?,
            forward: match forward {
                Some(f) => Some(f?),
                None => None,
            },
            threads,
            upstream_pool_size: file.server.upstream_pool_size,
            log_level: file.log.level.clone(),
            log_format: file.log.format,
            audit: None,
            telemetry: None,
        })
    }

    fn addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.errs.push(
                    path,
                    format!(
                        "invalid address \"{s}\": write IP:port, e.g. 127.0.0.1:8080 or [::]:8080"
                    ),
                );
                None
            }
        }
    }

    fn guards(&mut self, r: &schema::RequestGuards) -> Guards {
        let h = r.max_header_bytes.get();
        if h < 1024 {
            self.errs
                .push("request.max_header_bytes", "must be at least 1KiB");
        }
        if h > 1 << 20 {
            self.errs
                .push("request.max_header_bytes", "must be at most 1MiB");
        }
        let b = r.max_body_bytes.get();
        if b > 1 << 30 {
            self.errs.push(
                "request.max_body_bytes",
                "must be at most 1GiB (bodies are held in memory)",
            );
        }
        for (key, d) in [
            ("request.header_timeout", r.header_timeout.get()),
            ("request.body_timeout", r.body_timeout.get()),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                self.errs.push(key, "must be between 100ms and 1h");
            }
        }
        Guards {
            max_header_bytes: usize::try_from(h).unwrap_or(usize::MAX),
            max_body_bytes: usize::try_from(b).unwrap_or(usize::MAX),
            header_timeout: r.header_timeout.get(),
            body_timeout: r.body_timeout.get(),
        }
    }

    fn overrides(&mut self, d: &schema::Dns) -> Overrides {
        let mut o = Overrides::default();
        for (k, v) in &d.overrides {
            if let Err(e) = o.insert(k, v) {
                self.errs.push(format!("dns.overrides.{k}"), e);
            }
        }
        o
    }

    /// `limits`, compiled by their part from what routes and providers resolved to.
    fn limits(
        &mut self,
        file: &ConfigFile,
        routes: &RouteTable,
        providers: &IndexMap<String, Target>,
        tenants: &Tenants,
    ) -> crate::limits::Limits {
        let scopes = Scopes {
            tenants,
            routes: routes.iter().map(|r| &*r.name).collect(),
            route_provider: routes
                .iter()
                .map(|r| match &r.action.target {
                    Target::Ready(p) => providers.get_index_of(&*p.name).unwrap_or(usize::MAX),
                    Target::Disabled { .. } => usize::MAX,
                })
                .collect(),
            providers: providers
                .iter()
                .map(|(name, t)| {
                    let keys = match t {
                        Target::Ready(p) => Some(ProviderKeys {
                            names: match &p.auth.keys {
                                Some(pool) => (0..pool.len()).map(|k| pool.name(k)).collect(),
                                None => vec![Arc::from("default")],
                            },
                            tenant_own: p.tenant_auth.iter().map(Option::is_some).collect(),
                        }),
                        Target::Disabled { .. } => None,
                    };
                    (name.as_str(), keys)
                })
                .collect(),
        };
        let metrics = self.ctx.metrics;
        let (admitted, backend) = (
            |rule: &str| metrics.limit_admitted(rule),
            || metrics.limits_backend(),
        );
        LimitCompiler::new(
            &mut self.b,
            self.ctx.limits,
            LimitMetrics {
                admitted: &admitted,
                backend: &backend,
            },
        )
        .limits(file, &scopes)
    }

    fn dns(&mut self, d: &schema::Dns) -> DnsSettings {
        if d.min_ttl > d.max_ttl {
            self.errs.push(
                "dns.min_ttl",
                format!("{} is above dns.max_ttl ({})", d.min_ttl, d.max_ttl),
            );
        }
        DnsSettings {
            min_ttl: d.min_ttl.get(),
            max_ttl: d.max_ttl.get(),
            negative_ttl: d.negative_ttl.get(),
        }
    }

    fn provider(
        &mut self,
        name: &str,
        p: &schema::Provider,
        dns: DnsSettings,
        credential_headers: &[HeaderName],
        tenants: &Tenants,
        tenant_defs: &[Option<&schema::TenantDef>],
    ) -> Target {
        let base = format!("providers.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            self.errs.push(
                &base,
                "provider names may only use letters, digits, '-', '_' and '.'",
            );
        }
        let mut missing: Vec<String> = Vec::new();

        // base URL
        let url = self.secret(
            &format!("{base}.base_url"),
            &p.base_url.0,
            p.optional,
            &mut missing,
        );
        let parsed = url.and_then(|u| match parse_base_url(&u) {
            Ok(b) => Some(b),
            Err(e) => {
                self.errs.push(format!("{base}.base_url"), e);
                None
            }
        });

        // credential, and tenants' own keys
        let metrics = self.ctx.metrics;
        let (key, token) = (
            |provider: &str, key: &str| metrics.key(provider, key),
            |provider: &str| metrics.token(provider),
        );
        let mut ac = AuthCompiler::new(
            &mut self.b,
            AuthMetrics {
                key: &key,
                token: &token,
            },
        );
        let auth = ac.auth(name, &base, p, &mut missing);
        let mut tenant_auth: Vec<Option<Arc<Auth>>> = Vec::with_capacity(tenants.list.len());
        for (t, def) in tenants.list.iter().zip(tenant_defs) {
            let own = def.and_then(|d| d.provider_keys.get(name));
            tenant_auth.push(own.and_then(|key| {
                let path = format!("tenants.{}.provider_keys.{name}", t.id);
                ac.tenant_key_auth(&path, p, key).map(Arc::new)
            }));
        }

        // static headers
        let mut headers = Vec::new();
        for (hname, value) in &p.headers {
            let path = format!("{base}.headers.{hname}");
            let Ok(n) = HeaderName::from_bytes(hname.as_bytes()) else {
                self.errs.push(path, "not a valid header name");
                continue;
            };
            if let Some(v) = self.secret(&path, &value.0, p.optional, &mut missing) {
                match HeaderValue::from_str(&v) {
                    Ok(mut hv) => {
                        hv.set_sensitive(true);
                        headers.push((n, hv));
                    }
                    Err(_) => self
                        .errs
                        .push(path, "value has characters not allowed in a header"),
                }
            }
        }

        let timeouts = self.timeouts(&base, &p.timeouts);
        if p.pool.max_h2_streams == 0 {
            self.errs
                .push(format!("{base}.pool.max_h2_streams"), "must be at least 1");
        }

        // TLS
        let tls_on = parsed.as_ref().is_some_and(|b| b.tls);
        let mut trust_list = None;
        let mut sni = parsed.as_ref().map(|b| b.host.clone()).unwrap_or_default();
        if parsed.is_some() && !tls_on && (p.tls.ca_file.is_some() || p.tls.sni.is_some()) {
            self.errs.push(
                format!("{base}.tls"),
                "TLS settings need an https:// base_url",
            );
        }
        if tls_on {
            let mut extra = Vec::new();
            if let Some(ca) = p
                .tls
                .ca_file
                .as_ref()
                .filter(|_| self.ctx.mode != LoadMode::Structure)
            {
                match trust::load_ca_file(ca) {
                    Ok(c) => {
                        for cert in &c {
                            self.fingerprint.update(cert.as_ref());
                        }
                        self.files.push(ca.clone());
                        extra = c;
                    }
                    Err(e) => self.errs.push(format!("{base}.tls.ca_file"), e),
                }
            }
            if !p.tls.public_roots && p.tls.ca_file.is_none() {
                self.errs.push(
                    format!("{base}.tls.public_roots"),
                    "false needs tls.ca_file, or no certificate could ever be trusted",
                );
            }
            if let Some(s) = &p.tls.sni {
                match rustls_pki_types::ServerName::try_from(s.as_str()) {
                    Ok(_) if !s.is_empty() => sni = s.clone(),
                    _ => self.errs.push(
                        format!("{base}.tls.sni"),
                        format!("\"{s}\" is not a valid server name"),
                    ),
                }
            }
            trust_list = Some(trust::trust_list(&extra, p.tls.public_roots));
        }

        let mut defaults = Vec::new();
        if p.kind == ProviderKind::Anthropic {
            defaults.push((
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static("2023-06-01"),
            ));
        }

        let style = style_for(p.kind);
        if self.ctx.mode == LoadMode::Structure && p.base_url.0.has_refs() {
            // The host is unknown; what is written around the references must still
            // make a URL.
            if let Err(e) = parse_base_url(&p.base_url.0.fill("placeholder")) {
                self.errs.push(format!("{base}.base_url"), e);
            }
        }
        if !missing.is_empty() {
            let reason = missing.join("; ");
            if self.ctx.mode != LoadMode::Structure {
                self.warnings.push(format!(
                    "{base}: disabled (optional provider with missing secrets): {reason}"
                ));
            }
            return Target::Disabled {
                reason: Arc::from(format!("provider \"{name}\" is not configured on this sidecar (its credentials are missing)")),
                style,
            };
        }
        let (Some(b), Some(auth)) = (parsed, auth) else {
            // errors already recorded; the load will fail
            return Target::Disabled {
                reason: Arc::from("invalid"),
                style,
            };
        };

        // Client headers to remove: credentials, tenant headers, and whatever this
        // provider sets itself (so a client copy never rides along with ours).
        let mut strip: Vec<HeaderName> = Vec::new();
        let mut seen = BTreeSet::new();
        for h in credential_headers
            .iter()
            .chain(auth.signer.header_names().iter())
            .chain(headers.iter().map(|(n, _)| n))
        {
            if seen.insert(h.as_str().to_string()) {
                strip.push(h.clone());
            }
        }

        let authority = match HeaderValue::from_str(&b.authority) {
            Ok(v) => v,
            Err(_) => {
                self.errs.push(
                    format!("{base}.base_url"),
                    "host is not valid in a Host header",
                );
                return Target::Disabled {
                    reason: Arc::from("invalid"),
                    style,
                };
            }
        };
        let peer_options = upstream::peer_options(PeerSettings {
            tls: b.tls,
            http2: p.pool.http2,
            max_h2_streams: p.pool.max_h2_streams,
            idle_timeout: p.pool.idle_timeout.get(),
            timeouts: &timeouts,
            trust: trust_list,
        });
        Target::Ready(Arc::new(Provider {
            name: Arc::from(name),
            kind: p.kind,
            style,
            tls: b.tls,
            authority,
            sni,
            base_path: b.path.clone(),
            endpoint: match self.overrides.lookup(&b.host, b.port) {
                Some(addr) => Arc::new(crate::upstream::dns::HostEntry::fixed(
                    &b.host, b.port, addr,
                )),
                None => self.ctx.dns.entry(&b.host, b.port),
            },
            dns,
            peer_options,
            timeouts,
            auth: Arc::new(auth),
            tenant_auth,
            headers,
            defaults,
            strip: strip.into(),
            metrics: self.ctx.metrics.provider(name),
            breaker: self.breaker(&base, name, &b, &p.breaker),
        }))
    }

    fn breaker(
        &mut self,
        base: &str,
        name: &str,
        url: &BaseUrl,
        c: &schema::BreakerConfig,
    ) -> Option<Arc<crate::resilience::Breaker>> {
        if !(0.0..=1.0).contains(&c.failure_ratio) {
            self.errs.push(
                format!("{base}.breaker.failure_ratio"),
                "must be between 0 and 1",
            );
        }
        if c.cooldown.get().is_zero() || c.window.get().is_zero() {
            self.errs.push(
                format!("{base}.breaker"),
                "window and cooldown must be greater than 0",
            );
        }
        if c.consecutive_failures == 0 && c.failure_ratio == 0.0 && c.enabled {
            self.errs.push(
                format!("{base}.breaker"),
                "consecutive_failures and failure_ratio are both 0; set one, or `enabled: false`",
            );
        }
        if !c.enabled {
            return None;
        }
        let settings = crate::resilience::BreakerSettings {
            consecutive_failures: c.consecutive_failures,
            failure_ratio: c.failure_ratio,
            min_requests: c.min_requests,
            window: c.window.get(),
            cooldown: c.cooldown.get(),
            half_open_probes: c.half_open_probes.max(1),
        };
        let key = format!("{name}@{}:{}", url.host, url.port);
        Some(
            self.ctx
                .breakers
                .get(&key, settings, || self.ctx.metrics.breaker(name)),
        )
    }

    /// A target's `model` and `models`.
    fn models(
        &mut self,
        base: &str,
        fixed: Option<&str>,
        map: &IndexMap<String, String>,
    ) -> Models {
        if fixed == Some("") {
            self.errs.push(format!("{base}.model"), "must not be empty");
        }
        if fixed.is_some() && !map.is_empty() {
            self.errs.push(
                format!("{base}.models"),
                "cannot be combined with `model` (which would win for every request)",
            );
        }
        for (from, to) in map {
            if from.is_empty() || to.is_empty() {
                self.errs
                    .push(format!("{base}.models"), "model names must not be empty");
            }
        }
        Models {
            fixed: fixed.filter(|m| !m.is_empty()).map(Arc::from),
            map: map
                .iter()
                .map(|(f, t)| (Box::from(f.as_str()), Arc::from(t.as_str())))
                .collect(),
        }
    }

    fn target_timeouts(
        &mut self,
        base: &str,
        t: Option<&schema::TargetTimeouts>,
    ) -> TargetTimeouts {
        let Some(t) = t else {
            return TargetTimeouts::default();
        };
        for (k, v) in [
            ("first_byte", t.first_byte),
            ("idle", t.idle),
            ("total", t.total),
        ] {
            if v.is_some_and(|v| v.get().is_zero()) {
                self.errs
                    .push(format!("{base}.timeouts.{k}"), "must be greater than 0");
            }
        }
        if let (Some(f), Some(total)) = (t.first_byte, t.total) {
            if f > total {
                self.errs.push(
                    format!("{base}.timeouts.first_byte"),
                    format!("{f} is longer than timeouts.total ({total})"),
                );
            }
        }
        TargetTimeouts {
            first_byte: t.first_byte.map(|d| d.get()),
            idle: t.idle.map(|d| d.get()),
            total: t.total.map(|d| d.get()),
        }
    }

    fn timeouts(&mut self, base: &str, t: &schema::Timeouts) -> Timeouts {
        for (k, v) in [
            ("connect", t.connect),
            ("tls", t.tls),
            ("first_byte", t.first_byte),
            ("idle", t.idle),
            ("total", t.total),
        ] {
            if v.get().is_zero() {
                self.errs
                    .push(format!("{base}.timeouts.{k}"), "must be greater than 0");
            }
        }
        if t.first_byte > t.total {
            self.errs.push(
                format!("{base}.timeouts.first_byte"),
                format!(
                    "{} is longer than timeouts.total ({})",
                    t.first_byte, t.total
                ),
            );
        }
        Timeouts {
            connect: t.connect.get(),
            tls: t.tls.get(),
            first_byte: t.first_byte.get(),
            idle: t.idle.get(),
            total: t.total.get(),
        }
    }

    fn routes(&mut self, file: &ConfigFile, providers: &IndexMap<String, Target>) -> RouteTable {
        let mut routes: Vec<Route> = Vec::new();
        let mut names = BTreeSet::new();
        for (i, r) in file.routes.iter().enumerate() {
            let base = format!("routes[{i}]");
            let Some(target) = providers.get(&r.provider) else {
                if !r.provider.is_empty() {
                    let hint = did_you_mean(&r.provider, providers.keys().map(String::as_str))
                        .map(|s| format!("; did you mean \"{s}\"?"))
                        .unwrap_or_else(|| {
                            let known: Vec<&str> = providers.keys().map(String::as_str).collect();
                            if known.is_empty() {
                                "; no providers are defined".to_string()
                            } else {
                                format!("; defined providers: {}", known.join(", "))
                            }
                        });
                    self.errs.push(
                        format!("{base}.provider"),
                        format!("unknown provider \"{}\"{hint}", r.provider),
                    );
                }
                continue;
            };
            let name = r.name.clone().unwrap_or_else(|| r.provider.clone());
            if !names.insert(name.clone()) {
                let msg = if r.name.is_some() {
                    format!("duplicate route name \"{name}\"")
                } else {
                    format!("another route is also named \"{name}\" (the provider's name by default); give each a unique `name`")
                };
                self.errs.push(format!("{base}.name"), msg);
            }
            let (host, prefix) = routing::compile::matcher(&mut self.b, &base, r);
            let (provider_name, base_path, provider_host) = match target {
                Target::Ready(p) => (
                    p.name.clone(),
                    p.base_path.as_str(),
                    Some(p.endpoint.host()),
                ),
                Target::Disabled { .. } => (Arc::from(r.provider.as_str()), "", None),
            };
            // A route for the provider's own host serves apps that already use the
            // provider's paths (HTTPS_PROXY interception): keep them by default.
            let keep_path = match r.keep_path {
                Some(k) => k,
                None => matches!((&host, provider_host), (Some(h), Some(ph)) if h.matches(ph)),
            };
            if keep_path && r.rewrite_prefix.is_some() {
                self.errs.push(
                    format!("{base}.keep_path"),
                    "cannot be combined with rewrite_prefix",
                );
            }
            let mount = routing::join_mount(base_path, r.rewrite_prefix.as_deref().unwrap_or(""));
            let metrics = self.ctx.metrics.route(&name, &provider_name);
            let front = r.api.map(|a| match a {
                schema::FrontApi::Openai => crate::translate::Api::OpenAiChat,
                schema::FrontApi::Anthropic => crate::translate::Api::AnthropicMessages,
            });
            if front.is_some() && keep_path {
                self.errs.push(
                    format!("{base}.api"),
                    "a translating route cannot keep the client's path (keep_path, or a match on the provider's own host): each target gets its own API's path",
                );
            }
            let models = self.models(&base, r.model.as_deref(), &r.models);
            let timeouts = self.target_timeouts(&base, r.timeouts.as_ref());
            let translation = self.translation(&format!("{base}.provider"), r, front, target);
            let plan = self.route_plan(&base, r, providers, front);
            let models_list = front.and_then(|f| {
                let mut names: Vec<(&str, &str)> = Vec::new();
                let targets = std::iter::once((r.provider.as_str(), &models))
                    .chain(plan.fallbacks.iter().map(|fb| (&*fb.provider, &fb.models)));
                for (provider, m) in targets {
                    for n in m.listed() {
                        if !names.iter().any(|(x, _)| *x == n) {
                            names.push((n, provider));
                        }
                    }
                }
                (!names.is_empty()).then(|| models_list(f, &names))
            });
            let action = RouteAction {
                target: target.clone(),
                plan,
                front,
                models,
                timeouts,
                models_list,
                translation,
            };
            let route = Route::new(
                Arc::from(name.as_str()),
                routes.len(),
                host,
                prefix,
                mount,
                metrics,
                action,
            )
            .keeping_path(keep_path);
            routing::compile::check_reachable(&mut self.b, &base, &routes, &route);
            routes.push(route);
        }
        RouteTable::new(routes)
    }

    /// The translation a target of a route needs, or None (pass-through); an error when
    /// the target's API cannot be reached from the route's.
    fn translation(
        &mut self,
        path: &str,
        r: &schema::Route,
        front: Option<crate::translate::Api>,
        target: &Target,
    ) -> Option<Arc<Translation>> {
        let front = front?;
        let Target::Ready(p) = target else {
            return None;
        };
        if r.default_max_tokens == 0 {
            self.errs.push(
                path.replace(".provider", ".default_max_tokens"),
                "must be at least 1",
            );
        }
        let (api, endpoint) = native_api(p.kind, &p.base_path);
        if api == crate::translate::Api::Gemini
            && !(endpoint.contains("/projects/") && endpoint.contains("/locations/"))
        {
            self.errs.push(
                path.to_string(),
                format!(
                    "provider \"{}\" (vertex_ai) must have a base_url that names the project and location, e.g. https://us-central1-aiplatform.googleapis.com/v1/projects/my-project/locations/us-central1, for the sidecar to send Gemini requests to it",
                    p.name
                ),
            );
            return None;
        }
        let endpoint = if !api.path_has_model() {
            endpoint.parse::<http::Uri>().ok().map(Endpoint::Fixed)
        } else {
            let probe = api.model_path(&endpoint, "m", true);
            probe
                .parse::<http::Uri>()
                .ok()
                .map(|_| Endpoint::PerModel { base: endpoint })
        };
        let Some(endpoint) = endpoint else {
            self.errs.push(
                path.to_string(),
                format!(
                    "provider \"{}\": its base path does not make a valid endpoint path",
                    p.name
                ),
            );
            return None;
        };
        // A target of the route's own API still gets its own endpoint's path, so that
        // one client base URL reaches every target; its body passes through.
        Some({
            Arc::new(Translation {
                front,
                target: api,
                endpoint,
                responses: matches!(p.kind, ProviderKind::Openai | ProviderKind::AzureOpenai)
                    .then(|| {
                        format!("{}/responses", p.base_path.trim_end_matches('/'))
                            .parse()
                            .ok()
                    })
                    .flatten(),
                options: crate::translate::Options {
                    default_max_tokens: r.default_max_tokens.max(1),
                },
            })
        })
    }

    fn route_plan(
        &mut self,
        base: &str,
        r: &schema::Route,
        providers: &IndexMap<String, Target>,
        front: Option<crate::translate::Api>,
    ) -> RoutePlan {
        let c = &r.retry;
        if c.max_attempts == 0 || c.max_attempts > 10 {
            self.errs.push(
                format!("{base}.retry.max_attempts"),
                "must be between 1 (no retries) and 10",
            );
        }
        if c.backoff > c.backoff_max {
            self.errs.push(
                format!("{base}.retry.backoff"),
                format!(
                    "{} is longer than retry.backoff_max ({})",
                    c.backoff, c.backoff_max
                ),
            );
        }
        if !(0.0..=1.0).contains(&c.budget_ratio) {
            self.errs.push(
                format!("{base}.retry.budget_ratio"),
                "must be between 0 and 1 (a share of the route's requests)",
            );
        }
        let retry = crate::resilience::RetryPolicy {
            max_attempts: c.max_attempts.clamp(1, 10),
            backoff_base: c.backoff.get(),
            backoff_max: c.backoff_max.get(),
            retry_after_max: c.retry_after_max.get(),
            budget: crate::resilience::RetryBudget::new(c.budget_ratio, c.budget_min_per_second),
        };
        let mut fallbacks = Vec::new();
        for (i, f) in r.fallback.iter().enumerate() {
            let path = format!("{base}.fallback[{i}]");
            let Some(target) = providers.get(&f.provider) else {
                let hint = did_you_mean(&f.provider, providers.keys().map(String::as_str))
                    .map(|s| format!("; did you mean \"{s}\"?"))
                    .unwrap_or_default();
                self.errs.push(
                    format!("{path}.provider"),
                    format!("unknown provider \"{}\"{hint}", f.provider),
                );
                continue;
            };
            if f.provider == r.provider && f.model.is_none() && f.models.is_empty() {
                self.errs.push(
                    path.clone(),
                    "the route's own provider again without another `model` would repeat the same request",
                );
            }
            let models = self.models(&path, f.model.as_deref(), &f.models);
            let timeouts = self.target_timeouts(&path, f.timeouts.as_ref());
            let base_path = match target {
                Target::Ready(p) => p.base_path.as_str(),
                Target::Disabled { .. } => "",
            };
            let translation = self.translation(&format!("{path}.provider"), r, front, target);
            fallbacks.push(FallbackPlan {
                provider: Arc::from(f.provider.as_str()),
                target: target.clone(),
                mount: routing::join_mount(base_path, r.rewrite_prefix.as_deref().unwrap_or("")),
                models,
                timeouts,
                translation,
            });
        }
        let mut ready_after = vec![false; fallbacks.len() + 1];
        for i in (0..fallbacks.len()).rev() {
            ready_after[i] = ready_after[i + 1] || matches!(fallbacks[i].target, Target::Ready(_));
        }
        RoutePlan {
            retry,
            fallbacks,
            ready_after: ready_after.into(),
            audit_bodies: observability::compile::audit_bodies(&mut self.b, base, r),
        }
    }
}

fn style_for(kind: ProviderKind) -> ErrorStyle {
    match kind {
        ProviderKind::Anthropic => ErrorStyle::Anthropic,
        _ => ErrorStyle::OpenAi,
    }
}

struct BaseUrl {
    tls: bool,
    host: String,
    port: u16,
    /// `host` or `host:port` when the port is not the scheme's default.
    authority: String,
    /// Without trailing `/`; "" for none.
    path: String,
}

fn parse_base_url(u: &str) -> Result<BaseUrl, String> {
    let uri: http::Uri = u
        .parse()
        .map_err(|e| format!("\"{u}\" is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        Some(s) => {
            return Err(format!(
                "scheme \"{s}\" is not supported; use http:// or https://"
            ))
        }
        None => {
            return Err(format!(
                "\"{u}\" needs a scheme: https://host or http://host"
            ))
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("\"{u}\" has no host"))?;
    if authority.as_str().contains('@') {
        return Err("credentials in base_url are not allowed; configure `auth` instead".into());
    }
    if uri.query().is_some() {
        return Err("base_url must not have a query string".into());
    }
    let host = authority.host().to_string();
    if host.is_empty() {
        return Err(format!("\"{u}\" has no host"));
    }
    let default_port = if tls { 443 } else { 80 };
    // `http::Uri` takes `host:notaport` and reports no port: refuse it rather than
    // silently using the default one.
    let port = match authority.as_str()[host.len()..].strip_prefix(':') {
        None | Some("") => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(format!(
                    "\"{u}\": port \"{p}\" is not a port number (1-65535)"
                ))
            }
        },
    };
    let authority = if port == default_port {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let path = uri.path().trim_end_matches('/').to_string();
    if routing::has_dot_segment(&path) {
        return Err("base_url path must not contain . or .. segments".into());
    }
    Ok(BaseUrl {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        authority,
        path,
    })
}

#[cfg(test)]
mod tests;

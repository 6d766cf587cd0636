//! Compiling `limits.rules` into [`Limits`], with counters from the registry.

use crate::config::build::Build;
use crate::config::errors::did_you_mean;
use crate::config::schema::{self, ConfigFile, LimitScope};
use crate::limits::shared::{BackendMetrics, BackendSpec};
use crate::limits::{
    parse_rate, ConcurrencySpec, Dims, LimitRegistry, Limits, RateSpec, Rule, Shared, Spec,
    TokenSpec,
};
use crate::tenant::Tenants;
use prometheus::IntCounter;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// What the limits need from the parts compiled before them.
pub struct Scopes<'s> {
    pub tenants: &'s Tenants,
    /// Route names, in table order.
    pub routes: Vec<&'s str>,
    /// Each route's provider, by index into `providers` (`usize::MAX`: none ready).
    pub route_provider: Vec<usize>,
    /// Providers in config order, with their keys when the provider is ready.
    pub providers: Vec<(&'s str, Option<ProviderKeys>)>,
}

/// A ready provider's credentials as a `key`-scoped rule counts them.
pub struct ProviderKeys {
    /// Its pool's key names, or its one credential's name (`default`).
    pub names: Vec<Arc<str>>,
    /// By tenant index: whether the tenant brings its own key for this provider.
    pub tenant_own: Vec<bool>,
}

/// The metric handles limits keep, made by the caller (metrics sit above this part).
pub struct LimitMetrics<'m> {
    /// `rule` → its admitted-requests counter.
    pub admitted: &'m dyn Fn(&str) -> IntCounter,
    /// The shared backend's counters.
    pub backend: &'m dyn Fn() -> BackendMetrics,
}

/// Compiles `limits` over one load's [`Build`], with counters from `registry` (they
/// survive reloads).
pub struct LimitCompiler<'c, 'a> {
    b: &'c mut Build<'a>,
    registry: &'c LimitRegistry,
    metrics: LimitMetrics<'c>,
}

impl<'a> std::ops::Deref for LimitCompiler<'_, 'a> {
    type Target = Build<'a>;
    fn deref(&self) -> &Build<'a> {
        self.b
    }
}

impl std::ops::DerefMut for LimitCompiler<'_, '_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.b
    }
}

impl<'c, 'a> LimitCompiler<'c, 'a> {
    pub fn new(
        b: &'c mut Build<'a>,
        registry: &'c LimitRegistry,
        metrics: LimitMetrics<'c>,
    ) -> Self {
        LimitCompiler {
            b,
            registry,
            metrics,
        }
    }

    pub fn limits(&mut self, file: &ConfigFile, scopes: &Scopes<'_>) -> Limits {
        let tenants = scopes.tenants;
        let mut out = Limits::default();
        let mut names = BTreeSet::new();
        let shared = self.limits_backend(&file.limits);
        for (i, r) in file.limits.rules.iter().enumerate() {
            let base = format!("limits.rules[{i}]");
            if !names.insert(r.name.clone()) {
                self.errs.push(
                    format!("{base}.name"),
                    format!("duplicate rule \"{}\"", r.name),
                );
            }
            let spec = self.limit_spec(&base, r);
            let dims = Dims {
                tenant: r.scope.contains(&LimitScope::Tenant),
                route: r.scope.contains(&LimitScope::Route),
                provider: r.scope.contains(&LimitScope::Provider),
                key: r.scope.contains(&LimitScope::Key),
            };
            let tenant_ids: Vec<&str> = tenants.list.iter().map(|t| &*t.id).collect();
            let provider_names: Vec<&str> = scopes.providers.iter().map(|(n, _)| *n).collect();
            let tf = self.filter(
                &format!("{base}.match.tenants"),
                &r.matcher.tenants,
                &tenant_ids,
            );
            let rf = self.filter(
                &format!("{base}.match.routes"),
                &r.matcher.routes,
                &scopes.routes,
            );
            let pf = self.filter(
                &format!("{base}.match.providers"),
                &r.matcher.providers,
                &provider_names,
            );
            let Some(spec) = spec else {
                continue;
            };
            if dims.key && spec.tokens.is_some_and(|t| t.clamp) {
                {
                    self.errs.push(
                        format!("{base}.tokens.clamp_max_tokens"),
                        "not available with scope key: the key is picked after the body is final",
                    );
                }
            }
            // One counter per scope value, for every value the rule can see.
            let mut states = HashMap::new();
            let key_slots: Vec<(usize, usize, String)> = if dims.key {
                key_slots(&scopes.providers, &tenant_ids)
            } else {
                vec![(usize::MAX, 0, String::new())]
            };
            for (ri, route_name) in scopes.routes.iter().enumerate() {
                for (ti, _) in tenants.list.iter().enumerate() {
                    for (kp, slot, key_name) in &key_slots {
                        let p = if dims.key {
                            *kp
                        } else {
                            scopes.route_provider.get(ri).copied().unwrap_or(usize::MAX)
                        };
                        let key = (
                            if dims.tenant { ti } else { 0 },
                            if dims.route { ri } else { 0 },
                            if dims.provider || dims.key { p } else { 0 },
                            *slot,
                        );
                        if states.contains_key(&key) {
                            continue;
                        }
                        let mut label = r.name.clone();
                        if dims.tenant {
                            label.push_str(&format!("|tenant={}", tenant_ids[ti]));
                        }
                        if dims.route {
                            label.push_str(&format!("|route={route_name}"));
                        }
                        if dims.provider || dims.key {
                            label.push_str(&format!(
                                "|provider={}",
                                provider_names.get(p).copied().unwrap_or("-")
                            ));
                        }
                        if dims.key {
                            label.push_str(&format!("|key={key_name}"));
                        }
                        states.insert(key, self.registry.state(&label, spec, shared.as_ref()));
                    }
                }
            }
            let rule = Rule {
                name: Arc::from(r.name.as_str()),
                dims,
                tenants: tf,
                routes: rf,
                providers: pf,
                states,
                spec,
                admitted: Some((self.metrics.admitted)(&r.name)),
            };
            if dims.key {
                out.key_rules.push(rule);
            } else {
                out.rules.push(rule);
            }
        }
        out.needs_estimate = out
            .rules
            .iter()
            .chain(&out.key_rules)
            .any(|r| r.spec.tokens.is_some());
        out.route_provider = scopes.route_provider.clone();
        out.provider_index = scopes
            .providers
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (Arc::from(*name), i))
            .collect();
        out.tenant_key_base = scopes
            .providers
            .iter()
            .map(|(_, keys)| keys.as_ref().map_or(1, |k| k.names.len()))
            .collect();
        out
    }

    /// `limits.backend`: none or `local` keeps counters here; a Redis URL shares them.
    fn limits_backend(&mut self, l: &schema::Limits) -> Option<Shared> {
        if !(l.lease > 0.0 && l.lease <= 1.0) {
            self.errs.push(
                "limits.lease",
                format!("{} is not a share: write a number above 0 and at most 1 (0.1 leases a tenth of each budget at a time)", l.lease),
            );
        }
        if l.backend_timeout.get().is_zero() {
            self.errs
                .push("limits.backend_timeout", "must be greater than 0");
        }
        let t = l.backend.as_ref()?;
        let url = self.resolve("limits.backend", &t.0, false).ok()?;
        let url = url.trim();
        if url.is_empty() || url == "local" {
            return None;
        }
        if !url.starts_with("redis://") {
            let scheme = url.split_once("://").map_or("", |(s, _)| s);
            let what = if scheme.is_empty() {
                "a value that is neither `local` nor a URL".to_string()
            } else {
                format!("a {scheme}:// URL")
            };
            self.errs.push(
                "limits.backend",
                format!("{what}: write `local` or redis://[user:password@]host:port[/db] (TLS and unix sockets are not supported yet)"),
            );
            return None;
        }
        let spec = BackendSpec {
            url: url.to_string(),
            policy: l.on_backend_failure,
            timeout: l.backend_timeout.get(),
            prefix: l.key_prefix.clone(),
        };
        let backend_metrics = self.metrics.backend;
        match self.registry.backend(&spec, backend_metrics) {
            Ok(backend) => Some(Shared {
                backend,
                lease: l.lease,
            }),
            Err(e) => {
                self.errs.push("limits.backend", e);
                None
            }
        }
    }

    fn filter(&mut self, path: &str, wanted: &[String], known: &[&str]) -> Option<Vec<usize>> {
        if wanted.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for w in wanted {
            match known.iter().position(|k| k == w) {
                Some(i) => out.push(i),
                None => {
                    let hint = did_you_mean(w, known.iter().copied())
                        .map(|s| format!("; did you mean \"{s}\"?"))
                        .unwrap_or_default();
                    self.errs.push(path, format!("unknown name \"{w}\"{hint}"));
                }
            }
        }
        Some(out)
    }

    fn limit_spec(&mut self, base: &str, r: &schema::LimitRule) -> Option<Spec> {
        if r.requests.is_none() && r.concurrency.is_none() && r.tokens.is_none() {
            self.errs.push(
                base,
                "a rule needs at least one of requests, concurrency and tokens",
            );
            return None;
        }
        let mut ok = true;
        let requests = match &r.requests {
            Some(q) => match parse_rate(&q.rate) {
                Ok(per_second) => {
                    let burst = q.burst.unwrap_or(per_second.ceil().max(1.0) as u64);
                    if burst == 0 {
                        self.errs
                            .push(format!("{base}.requests.burst"), "must be at least 1");
                        ok = false;
                    }
                    Some(RateSpec { per_second, burst })
                }
                Err(e) => {
                    self.errs.push(format!("{base}.requests.rate"), e);
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let concurrency = r.concurrency.as_ref().map(|c| {
            if c.max == 0 {
                self.errs
                    .push(format!("{base}.concurrency.max"), "must be at least 1");
                ok = false;
            }
            ConcurrencySpec {
                max: c.max,
                queue: c.queue,
                queue_timeout: c.queue_timeout.get(),
            }
        });
        let tokens = r.tokens.as_ref().map(|t| {
            if t.limit == 0 || t.per.get().is_zero() {
                self.errs.push(
                    format!("{base}.tokens"),
                    "limit and per must be greater than 0",
                );
                ok = false;
            }
            TokenSpec {
                limit: t.limit,
                per: t.per.get(),
                count: t.count,
                default_max_tokens: t.default_max_tokens,
                clamp: t.clamp_max_tokens,
                accounting: t.accounting,
            }
        });
        ok.then_some(Spec {
            requests,
            concurrency,
            tokens,
        })
    }
}

/// Every provider key a `key`-scoped rule counts: (provider index, slot, name). A pool's
/// keys by their names, a provider's one credential as `default`, and a tenant's own key
/// as `tenant:ID` (slots from [`Limits::tenant_key_base`]).
fn key_slots(
    providers: &[(&str, Option<ProviderKeys>)],
    tenant_ids: &[&str],
) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    for (pi, (_, keys)) in providers.iter().enumerate() {
        let Some(keys) = keys else { continue };
        let base = keys.names.len();
        for (k, name) in keys.names.iter().enumerate() {
            out.push((pi, k, name.to_string()));
        }
        for (ti, own) in keys.tenant_own.iter().enumerate() {
            if *own {
                let id = tenant_ids.get(ti).copied().unwrap_or("-");
                out.push((pi, base + ti, format!("tenant:{id}")));
            }
        }
    }
    out
}

//! Compiling `limits.rules` into [`Limits`], with counters from the registry.

use super::{Compiler, Target};
use crate::config::errors::did_you_mean;
use crate::config::schema::{self, ConfigFile, LimitScope};
use crate::limits::shared::BackendSpec;
use crate::limits::{
    parse_rate, ConcurrencySpec, Dims, Limits, RateSpec, Rule, Shared, Spec, TokenSpec,
};
use crate::tenant::Tenants;
use indexmap::IndexMap;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

impl Compiler<'_> {
    pub(super) fn limits(
        &mut self,
        file: &ConfigFile,
        routes: &super::RouteTable,
        providers: &IndexMap<String, Target>,
        tenants: &Tenants,
    ) -> Limits {
        let mut out = Limits::default();
        let mut names = BTreeSet::new();
        let shared = self.limits_backend(&file.limits);
        // Each route's provider, by index into `providers`.
        let route_provider: Vec<usize> = routes
            .iter()
            .map(|r| {
                let name = match &r.action.target {
                    Target::Ready(p) => p.name.to_string(),
                    Target::Disabled { .. } => String::new(),
                };
                providers.get_index_of(&name).unwrap_or(usize::MAX)
            })
            .collect();
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
            let route_names: Vec<&str> = routes.iter().map(|r| &*r.name).collect();
            let provider_names: Vec<&str> = providers.keys().map(String::as_str).collect();
            let tf = self.filter(
                &format!("{base}.match.tenants"),
                &r.matcher.tenants,
                &tenant_ids,
            );
            let rf = self.filter(
                &format!("{base}.match.routes"),
                &r.matcher.routes,
                &route_names,
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
                key_slots(providers, &tenant_ids)
            } else {
                vec![(usize::MAX, 0, String::new())]
            };
            for (ri, _) in routes.iter().enumerate() {
                for (ti, _) in tenants.list.iter().enumerate() {
                    for (kp, slot, key_name) in &key_slots {
                        let p = if dims.key {
                            *kp
                        } else {
                            route_provider.get(ri).copied().unwrap_or(usize::MAX)
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
                            label.push_str(&format!("|route={}", route_names[ri]));
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
                        states.insert(key, self.ctx.limits.state(&label, spec, shared.as_ref()));
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
                admitted: Some(self.ctx.metrics.limit_admitted(&r.name)),
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
        out.route_provider = route_provider;
        out.provider_index = providers
            .keys()
            .enumerate()
            .map(|(i, name)| (Arc::from(name.as_str()), i))
            .collect();
        out.tenant_key_base = providers
            .values()
            .map(|t| match t {
                Target::Ready(p) => provider_key_slots(p),
                Target::Disabled { .. } => 1,
            })
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
        let metrics = self.ctx.metrics;
        match self.ctx.limits.backend(&spec, || metrics.limits_backend()) {
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

/// A provider's own key slots: its pool's keys, or its one credential.
fn provider_key_slots(p: &crate::upstream::Provider) -> usize {
    p.auth.keys.as_ref().map_or(1, |k| k.len())
}

/// Every provider key a `key`-scoped rule counts: (provider index, slot, name). A pool's
/// keys by their names, a provider's one credential as `default`, and a tenant's own key
/// as `tenant:ID` (slots from [`Limits::tenant_key_base`]).
fn key_slots(
    providers: &IndexMap<String, Target>,
    tenant_ids: &[&str],
) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    for (pi, t) in providers.values().enumerate() {
        let Target::Ready(p) = t else { continue };
        let base = provider_key_slots(p);
        for k in 0..base {
            let name = p
                .auth
                .keys
                .as_ref()
                .map_or(Arc::from("default"), |pool| pool.name(k));
            out.push((pi, k, name.to_string()));
        }
        for (ti, own) in p.tenant_auth.iter().enumerate() {
            if own.is_some() {
                let id = tenant_ids.get(ti).copied().unwrap_or("-");
                out.push((pi, base + ti, format!("tenant:{id}")));
            }
        }
    }
    out
}

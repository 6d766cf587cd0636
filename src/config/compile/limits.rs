//! Compiling `limits.rules` into [`Limits`], with counters from the registry.

use super::{Compiler, Target};
use crate::config::errors::did_you_mean;
use crate::config::schema::{self, ConfigFile, LimitScope};
use crate::limits::{parse_rate, ConcurrencySpec, Dims, Limits, RateSpec, Rule, Spec, TokenSpec};
use crate::routing::RouteTable;
use crate::tenant::Tenants;
use indexmap::IndexMap;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

impl Compiler<'_> {
    pub(super) fn limits(
        &mut self,
        file: &ConfigFile,
        routes: &RouteTable,
        targets: &[Target],
        providers: &IndexMap<String, Target>,
        tenants: &Tenants,
    ) -> Limits {
        let mut out = Limits::default();
        let mut names = BTreeSet::new();
        // Each route's provider, by index into `providers`.
        let route_provider: Vec<usize> = targets
            .iter()
            .map(|t| {
                let name = match t {
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
            // One counter per scope value, for every value the rule can see.
            let mut states = HashMap::new();
            for (ri, _) in routes.iter().enumerate() {
                let p = route_provider.get(ri).copied().unwrap_or(usize::MAX);
                for (ti, _) in tenants.list.iter().enumerate() {
                    let key = (
                        if dims.tenant { ti } else { 0 },
                        if dims.route { ri } else { 0 },
                        if dims.provider { p } else { 0 },
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
                    if dims.provider {
                        label.push_str(&format!(
                            "|provider={}",
                            provider_names.get(p).copied().unwrap_or("-")
                        ));
                    }
                    states.insert(key, self.ctx.limits.state(&label, spec));
                }
            }
            out.rules.push(Rule {
                name: Arc::from(r.name.as_str()),
                dims,
                tenants: tf,
                routes: rf,
                providers: pf,
                states,
                spec,
            });
        }
        out.needs_estimate = out.rules.iter().any(|r| r.spec.tokens.is_some());
        out.route_provider = route_provider;
        out
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

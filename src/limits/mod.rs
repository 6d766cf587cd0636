//! Request-rate, concurrency and token-budget limits.
//!
//! ```text
//!  exchange, after routing, tenant and body:
//!    for each rule that matches (tenant, route, provider):
//!      counter = rule.states[scope key]          precomputed at load, survives reloads
//!      requests     GCRA take 1                  ─┐
//!      tokens       GCRA reserve estimate         ├─ any refusal: undo the others, 429
//!      concurrency  semaphore (optional queue)   ─┘
//!  response ends: reconcile tokens with the real usage (refund or charge the rest),
//!                 release the concurrency slot
//! ```
//!
//! The estimate reserved is the request's `max_tokens` (or `max_completion_tokens`,
//! `max_output_tokens`; else the rule's `default_max_tokens`) for output, and a quarter of
//! the body's bytes for input. Reserving before the response, instead of charging after
//! it, is what keeps 50 concurrent streams from overshooting a budget.

pub mod compile;
pub mod gcra;
pub mod shared;

use crate::config::schema::{TokenAccounting, TokenCount};
use crate::usage::Usage;
use gcra::{now_ns, Gcra};
use shared::{Backend, Lease, Refused};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A rule's request rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateSpec {
    pub per_second: f64,
    pub burst: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConcurrencySpec {
    pub max: u32,
    pub queue: u32,
    pub queue_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenSpec {
    pub limit: u64,
    pub per: Duration,
    pub count: TokenCount,
    pub default_max_tokens: u64,
    pub clamp: bool,
    pub accounting: TokenAccounting,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec {
    pub requests: Option<RateSpec>,
    pub concurrency: Option<ConcurrencySpec>,
    pub tokens: Option<TokenSpec>,
}

/// A budget: in this process, or leased from a shared backend.
pub enum Bucket {
    Local(Gcra),
    Shared(Arc<Lease>),
}

impl Bucket {
    fn new(capacity: u64, period: Duration, shared: Option<(&Shared, String)>) -> Bucket {
        match shared {
            None => Bucket::Local(Gcra::new(capacity, period)),
            Some((s, key)) => Bucket::Shared(Arc::new(Lease::new(
                s.backend.clone(),
                key,
                capacity,
                period,
                s.lease,
            ))),
        }
    }

    async fn take(&self, now: u64, n: u64) -> Result<(), Refused> {
        match self {
            Bucket::Local(g) => g.try_take(now, n).map(drop).map_err(Refused::Wait),
            Bucket::Shared(l) => l.take(n).await,
        }
    }

    async fn check(&self, now: u64) -> Result<(), Refused> {
        match self {
            Bucket::Local(g) => g.check(now).map(drop).map_err(Refused::Wait),
            Bucket::Shared(l) => l.check().await,
        }
    }

    fn charge(&self, now: u64, n: u64) {
        match self {
            Bucket::Local(g) => g.charge(now, n),
            Bucket::Shared(l) => l.charge(n),
        }
    }

    fn refund(&self, now: u64, n: u64) {
        match self {
            Bucket::Local(g) => g.refund(now, n),
            Bucket::Shared(l) => l.refund(n),
        }
    }

    /// Units a request could take now.
    async fn left(&self, now: u64) -> u64 {
        match self {
            Bucket::Local(g) => g.snapshot(now).remaining,
            Bucket::Shared(l) => l.left().await,
        }
    }
}

/// Where shared counters live, and how much of a budget one sidecar leases at a time.
#[derive(Clone)]
pub struct Shared {
    pub backend: Arc<Backend>,
    pub lease: f64,
}

/// The counters of one rule for one scope value.
pub struct State {
    spec: Spec,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    slots: Option<Arc<Semaphore>>,
    queued: AtomicU32,
}

impl State {
    /// Counters for `spec`; rates and budgets in `shared` when given (its keys named
    /// after `label`).
    fn new(spec: Spec, label: &str, shared: Option<&Shared>) -> State {
        let key = |what: &str| shared.map(|s| (s, s.backend.key(label, what)));
        State {
            requests: spec.requests.map(|r| {
                // burst requests refill over burst / rate seconds
                let period = Duration::from_secs_f64(r.burst as f64 / r.per_second.max(1e-9));
                Bucket::new(r.burst, period, key("requests"))
            }),
            tokens: spec
                .tokens
                .map(|t| Bucket::new(t.limit, t.per, key("tokens"))),
            slots: spec
                .concurrency
                .map(|c| Arc::new(Semaphore::new(c.max as usize))),
            queued: AtomicU32::new(0),
            spec,
        }
    }

    /// The shared backend its budgets lease from, if any.
    fn backend(&self) -> Option<*const Backend> {
        [&self.requests, &self.tokens]
            .into_iter()
            .flatten()
            .find_map(|b| match b {
                Bucket::Shared(l) => Some(Arc::as_ptr(l.backend())),
                Bucket::Local(_) => None,
            })
    }
}

impl Spec {
    /// Has a rate or a budget (what a shared backend holds; concurrency stays local).
    fn budgets(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some()
    }
}

/// Which dimensions a rule keeps apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dims {
    pub tenant: bool,
    pub route: bool,
    pub provider: bool,
    /// One counter per provider key: checked per attempt, once the key is chosen.
    pub key: bool,
}

/// A compiled rule.
pub struct Rule {
    pub name: Arc<str>,
    pub dims: Dims,
    /// Filters by index (None: any).
    pub tenants: Option<Vec<usize>>,
    pub routes: Option<Vec<usize>>,
    pub providers: Option<Vec<usize>>,
    /// (tenant, route, provider, key) with unused dimensions as 0 → counters.
    pub states: HashMap<StateKey, Arc<State>>,
    pub spec: Spec,
    /// Requests this rule admitted (`llm_sidecar_limit_admitted_total{rule}`).
    pub admitted: Option<prometheus::IntCounter>,
}

/// (tenant, route, provider, key slot).
pub type StateKey = (usize, usize, usize, usize);

/// Who a request is, for limits: indexes into the snapshot's tenants, routes, providers,
/// and (per attempt) the provider's key slot.
#[derive(Clone, Copy, Debug)]
pub struct Subject {
    pub tenant: usize,
    pub route: usize,
    pub provider: usize,
    pub key: usize,
}

impl Rule {
    pub fn key(&self, s: Subject) -> StateKey {
        (
            if self.dims.tenant { s.tenant } else { 0 },
            if self.dims.route { s.route } else { 0 },
            if self.dims.provider || self.dims.key {
                s.provider
            } else {
                0
            },
            if self.dims.key { s.key } else { 0 },
        )
    }

    fn applies(&self, s: Subject) -> bool {
        let ok = |f: &Option<Vec<usize>>, v: usize| f.as_ref().is_none_or(|f| f.contains(&v));
        ok(&self.tenants, s.tenant) && ok(&self.routes, s.route) && ok(&self.providers, s.provider)
    }
}

/// Keeps counters across reloads: a rule's counter for a scope value is the same object
/// as long as the rule's name and settings stay the same.
#[derive(Default)]
pub struct LimitRegistry {
    entries: crate::config::kept::Kept<State>,
    backends: crate::config::kept::Kept<Backend>,
}

impl LimitRegistry {
    /// Config-load time only. Counters are kept while the rule's settings and the
    /// backend stay the same.
    pub fn state(&self, label: &str, spec: Spec, shared: Option<&Shared>) -> Arc<State> {
        let shared = shared.filter(|_| spec.budgets());
        let key = match shared {
            Some(s) => format!("{label}@{}#{}", s.backend.shown(), s.lease),
            None => label.to_string(),
        };
        let backend = shared.map(|s| Arc::as_ptr(&s.backend));
        self.entries.get(
            &key,
            |s| s.spec == spec && s.backend() == backend,
            || State::new(spec, label, shared),
        )
    }

    /// One backend per settings, kept across reloads (with its connection).
    pub fn backend(
        &self,
        spec: &shared::BackendSpec,
        metrics: impl FnOnce() -> shared::BackendMetrics,
    ) -> Result<Arc<Backend>, String> {
        let key = format!(
            "{}|{:?}|{:?}|{}",
            spec.url, spec.policy, spec.timeout, spec.prefix
        );
        self.backends
            .try_get(&key, |_| true, || Backend::new(spec, Some(metrics())))
    }
}

/// Tokens a request is expected to use.
#[derive(Clone, Copy, Debug, Default)]
pub struct Estimate {
    pub input: u64,
    /// From the request body, if it names a maximum.
    pub max_output: Option<u64>,
}

impl Estimate {
    /// A body of `len` bytes (about 4 bytes a token) naming `max_output` tokens.
    pub fn new(len: usize, max_output: Option<u64>) -> Estimate {
        Estimate {
            input: (len as u64).div_ceil(4),
            max_output,
        }
    }

    /// Reads `max_tokens` (or its newer names) from a JSON body, and guesses the input
    /// from its size.
    pub fn of_body(body: &[u8]) -> Estimate {
        Estimate::new(
            body.len(),
            crate::usage::RequestFields::parse("", body).max_output,
        )
    }

    fn cost(&self, t: &TokenSpec, output: u64) -> u64 {
        match t.count {
            TokenCount::Total => self.input + output,
            TokenCount::Input => self.input,
            TokenCount::Output => output,
        }
    }
}

fn counted(t: &TokenSpec, u: &Usage) -> u64 {
    match t.count {
        TokenCount::Total => u.input + u.output,
        TokenCount::Input => u.input,
        TokenCount::Output => u.output,
    }
}

/// Why a request was refused, with what the 429's headers report.
#[derive(Debug, Clone)]
pub struct Denied {
    pub rule: Arc<str>,
    pub kind: DeniedKind,
    pub retry_after: Duration,
}

impl Denied {
    fn new(rule: &Rule, refused: Refused, kind: DeniedKind) -> Denied {
        match refused {
            Refused::Wait(retry_after) => Denied {
                rule: rule.name.clone(),
                kind,
                retry_after,
            },
            Refused::BackendDown => Denied {
                rule: rule.name.clone(),
                kind: DeniedKind::BackendDown,
                retry_after: Duration::from_secs(1),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeniedKind {
    Requests {
        limit: u64,
    },
    Tokens {
        limit: u64,
        remaining: u64,
        needed: u64,
    },
    Concurrency {
        max: u32,
    },
    /// The shared backend is unreachable, this sidecar's lease is spent and the policy
    /// is `deny`.
    BackendDown,
}

/// What a request holds while it runs: its token reservations and concurrency slots.
#[derive(Default)]
pub struct Held {
    tokens: Vec<(Arc<State>, u64)>,
    _slots: Vec<OwnedSemaphorePermit>,
    /// The most any token rule allows this request to generate (when clamping).
    pub clamp_to: Option<u64>,
}

impl Held {
    /// Takes over what `other` holds (an attempt's key limits, once its answer is the
    /// one the client gets).
    pub fn absorb(&mut self, mut other: Held) {
        self.tokens.append(&mut other.tokens);
        self._slots.append(&mut other._slots);
    }

    /// Settles the token reservations with what the response really used.
    pub fn reconcile(&mut self, used: Option<Usage>) {
        let now = now_ns();
        for (state, reserved) in self.tokens.drain(..) {
            let (Some(t), Some(g)) = (state.spec.tokens, &state.tokens) else {
                continue;
            };
            // With no usage at all (nothing reported, nothing seen) the reservation stands.
            let actual = used.map_or(reserved, |u| counted(&t, &u));
            if actual < reserved {
                g.refund(now, reserved - actual);
            } else if actual > reserved {
                g.charge(now, actual - reserved);
            }
        }
    }
}

/// What one attempt holds under the rules scoped by key. Dropped, it is settled as
/// unused (the attempt's answer did not reach the client); kept, it joins the exchange's
/// [`Held`] and is settled with the real usage.
pub struct AttemptHeld(Option<Held>);

impl AttemptHeld {
    pub fn new(held: Held) -> AttemptHeld {
        AttemptHeld(Some(held))
    }

    pub fn keep(mut self) -> Option<Held> {
        self.0.take()
    }
}

impl Drop for AttemptHeld {
    fn drop(&mut self) {
        if let Some(mut h) = self.0.take() {
            h.reconcile(Some(Usage::default()));
        }
    }
}

/// The rules of a snapshot.
#[derive(Default)]
pub struct Limits {
    /// Checked at admission.
    pub rules: Vec<Rule>,
    /// Scoped by key: checked per attempt, once the key is chosen.
    pub key_rules: Vec<Rule>,
    /// Route index → its provider's index (what a provider scope counts by).
    pub route_provider: Vec<usize>,
    /// Provider name → index (for fallback targets, which are not the route's).
    pub provider_index: HashMap<Arc<str>, usize>,
    /// Provider index → its key slots: pool keys (or its one credential) come first,
    /// then one slot per tenant with its own key, from this base.
    pub tenant_key_base: Vec<usize>,
    /// Some rule budgets tokens, so requests need an estimate (a body parse).
    pub needs_estimate: bool,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.key_rules.is_empty()
    }

    pub fn subject(&self, tenant: usize, route: usize) -> Subject {
        Subject {
            tenant,
            route,
            provider: self
                .route_provider
                .get(route)
                .copied()
                .unwrap_or(usize::MAX),
            key: 0,
        }
    }

    /// The subject of one attempt: `provider` with the key it picked (`pool_key`: the
    /// pool slot; `tenant_key`: the tenant's own credential). None: no key rule.
    pub fn key_subject(
        &self,
        base: Subject,
        provider: &str,
        pool_key: Option<usize>,
        tenant_key: bool,
    ) -> Option<Subject> {
        if self.key_rules.is_empty() {
            return None;
        }
        let p = *self.provider_index.get(provider)?;
        let key = if tenant_key {
            self.tenant_key_base.get(p)? + base.tenant
        } else {
            pool_key.unwrap_or(0)
        };
        Some(Subject {
            provider: p,
            key,
            ..base
        })
    }

    /// The estimate a request's tokens are reserved by (only when a rule needs one).
    pub fn estimate(&self, body_len: usize, max_output: Option<u64>) -> Estimate {
        if self.needs_estimate {
            Estimate::new(body_len, max_output)
        } else {
            Estimate::default()
        }
    }

    /// Admits a request expected to use `est`. Counters taken before a refusal are given
    /// back.
    pub async fn admit_estimate(&self, s: Subject, est: Estimate) -> Result<Held, Denied> {
        admit_rules(&self.rules, s, est).await
    }

    /// Admits one attempt with the key it picked (the rules scoped by key).
    pub async fn admit_key(&self, s: Subject, est: Estimate) -> Result<Held, Denied> {
        admit_rules(&self.key_rules, s, est).await
    }
}

/// Admits against `rules`; counters taken before a refusal are given back.
async fn admit_rules(rules: &[Rule], s: Subject, est: Estimate) -> Result<Held, Denied> {
    let mut held = Held::default();
    let now = now_ns();
    let mut taken_requests: Vec<Arc<State>> = Vec::new();
    let undo = |held: &mut Held, taken: &[Arc<State>]| {
        let now = now_ns();
        for st in taken {
            if let Some(g) = &st.requests {
                g.refund(now, 1);
            }
        }
        for (st, n) in held.tokens.drain(..) {
            if let Some(g) = &st.tokens {
                g.refund(now, n);
            }
        }
    };
    for rule in rules.iter().filter(|r| r.applies(s)) {
        let Some(state) = rule.states.get(&rule.key(s)) else {
            continue;
        };
        if let (Some(spec), Some(g)) = (state.spec.requests, &state.requests) {
            match g.take(now, 1).await {
                Ok(_) => taken_requests.push(state.clone()),
                Err(refused) => {
                    undo(&mut held, &taken_requests);
                    return Err(Denied::new(
                        rule,
                        refused,
                        DeniedKind::Requests { limit: spec.burst },
                    ));
                }
            }
        }
        if let (Some(t), Some(g)) = (state.spec.tokens, &state.tokens) {
            match take_tokens(g, &t, est, now).await {
                Ok((reserved, clamp)) => {
                    if let Some(allowed) = clamp {
                        held.clamp_to = Some(held.clamp_to.map_or(allowed, |c| c.min(allowed)));
                    }
                    held.tokens.push((state.clone(), reserved));
                }
                Err((refused, needed)) => {
                    let remaining = match g {
                        Bucket::Local(g) => g.snapshot(now).remaining,
                        Bucket::Shared(l) => l.slice().max(0) as u64,
                    };
                    undo(&mut held, &taken_requests);
                    return Err(Denied::new(
                        rule,
                        refused,
                        DeniedKind::Tokens {
                            limit: t.limit,
                            remaining,
                            needed,
                        },
                    ));
                }
            }
        }
        if let (Some(c), Some(sem)) = (state.spec.concurrency, &state.slots) {
            let permit = match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) if c.queue > 0 => {
                    let q = state.queued.fetch_add(1, Ordering::AcqRel);
                    let got = if q < c.queue {
                        tokio::time::timeout(c.queue_timeout, sem.clone().acquire_owned())
                            .await
                            .ok()
                            .and_then(Result::ok)
                    } else {
                        None
                    };
                    state.queued.fetch_sub(1, Ordering::AcqRel);
                    got
                }
                Err(_) => None,
            };
            match permit {
                Some(p) => held._slots.push(p),
                None => {
                    undo(&mut held, &taken_requests);
                    return Err(Denied {
                        rule: rule.name.clone(),
                        kind: DeniedKind::Concurrency { max: c.max },
                        retry_after: Duration::from_secs(1),
                    });
                }
            }
        }
    }
    for rule in rules.iter().filter(|r| r.applies(s)) {
        if let Some(c) = &rule.admitted {
            c.inc();
        }
    }
    Ok(held)
}

/// Takes a request's tokens from a budget: `Ok((reserved, clamped output))`,
/// or `Err((why, tokens needed))`. `after` accounting only checks the budget is not
/// spent and reserves nothing.
async fn take_tokens(
    g: &Bucket,
    t: &TokenSpec,
    est: Estimate,
    now: u64,
) -> Result<(u64, Option<u64>), (Refused, u64)> {
    let cost = est.cost(t, est.max_output.unwrap_or(t.default_max_tokens));
    if t.accounting == TokenAccounting::After {
        return g.check(now).await.map(|_| (0, None)).map_err(|w| (w, cost));
    }
    let refused = match g.take(now, cost).await {
        Ok(_) => return Ok((cost, None)),
        Err(r @ Refused::BackendDown) => return Err((r, cost)),
        Err(r) => r,
    };
    // Clamping: reserve what is left and cap the output to it.
    let fixed = est.cost(t, 0);
    if !t.clamp || t.count == TokenCount::Input {
        return Err((refused, cost));
    }
    let left = g.left(now).await;
    if left <= fixed {
        return Err((refused, cost));
    }
    let allowed = left - fixed;
    let cost = fixed + allowed;
    g.take(now, cost)
        .await
        .map(|_| (cost, Some(allowed)))
        .map_err(|w| (w, cost))
}

/// Parses `"10/s"`, `"600/m"`, `"1000/h"`, `"50000/d"` into requests per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (n, unit) = s
        .split_once('/')
        .ok_or_else(|| format!("\"{s}\": write a rate like 10/s, 600/m or 1000/h"))?;
    let n: f64 = n
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("\"{s}\": the count must be a positive number"))?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86400.0,
        other => {
            return Err(format!(
                "\"{s}\": unknown unit \"{other}\"; use s, m, h or d"
            ))
        }
    };
    Ok(n / per)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(spec: Spec) -> Limits {
        let mut states = HashMap::new();
        states.insert((0, 0, 0, 0), Arc::new(State::new(spec, "r", None)));
        Limits {
            route_provider: vec![0],
            needs_estimate: spec.tokens.is_some(),
            rules: vec![Rule {
                name: Arc::from("r"),
                dims: Dims::default(),
                tenants: None,
                routes: None,
                providers: None,
                states,
                spec,
                admitted: None,
            }],
            ..Default::default()
        }
    }

    const S: Subject = Subject {
        tenant: 0,
        route: 0,
        provider: 0,
        key: 0,
    };

    fn tokens(limit: u64, accounting: TokenAccounting, clamp: bool) -> Spec {
        Spec {
            requests: None,
            concurrency: None,
            tokens: Some(TokenSpec {
                limit,
                per: Duration::from_secs(3600),
                count: TokenCount::Total,
                default_max_tokens: 100,
                clamp,
                accounting,
            }),
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("10/s").unwrap(), 10.0);
        assert_eq!(parse_rate("600/m").unwrap(), 10.0);
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("-1/s").is_err());
        assert!(parse_rate("1/week").is_err());
    }

    #[test]
    fn estimates_read_max_tokens_and_body_size() {
        let e = Estimate::of_body(br#"{"model":"m","max_tokens":300}"#);
        assert_eq!(e.max_output, Some(300));
        assert_eq!(e.input, 8);
        let e = Estimate::of_body(br#"{"max_completion_tokens":7,"max_tokens":300}"#);
        assert_eq!(e.max_output, Some(7));
        assert_eq!(Estimate::of_body(b"not json").max_output, None);
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_then_reconcile() {
        let l = limits(tokens(1000, TokenAccounting::Reserve, false));
        let est = Estimate {
            input: 100,
            max_output: Some(400),
        };
        let mut a = l.admit_estimate(S, est).await.unwrap();
        let _b = l.admit_estimate(S, est).await.unwrap();
        // 1000 reserved: a third is refused, with the numbers
        let d = l.admit_estimate(S, est).await.err().unwrap();
        assert_eq!(
            d.kind,
            DeniedKind::Tokens {
                limit: 1000,
                remaining: 0,
                needed: 500
            }
        );
        // `a` used only 150: 350 come back, enough for nothing but ...
        a.reconcile(Some(Usage {
            input: 100,
            output: 50,
            ..Default::default()
        }));
        assert!(l
            .admit_estimate(
                S,
                Estimate {
                    input: 100,
                    max_output: Some(200)
                }
            )
            .await
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_fact_accounting_overshoots() {
        let l = limits(tokens(1000, TokenAccounting::After, false));
        let est = Estimate {
            input: 100,
            max_output: Some(400),
        };
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(l.admit_estimate(S, est).await.unwrap());
        }
        for h in &mut held {
            h.reconcile(Some(Usage {
                input: 100,
                output: 400,
                ..Default::default()
            }));
        }
        // 5000 used of 1000; now everything is refused for a long while
        assert!(l.admit_estimate(S, est).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn clamping_lowers_max_tokens_to_what_is_left() {
        let l = limits(tokens(1000, TokenAccounting::Reserve, true));
        let est = Estimate {
            input: 100,
            max_output: Some(600),
        };
        let a = l.admit_estimate(S, est).await.unwrap();
        assert_eq!(a.clamp_to, None);
        let b = l.admit_estimate(S, est).await.unwrap();
        assert_eq!(b.clamp_to, Some(200), "300 left, 100 of them input");
        assert!(
            l.admit_estimate(S, est).await.is_err(),
            "nothing left to clamp to"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_and_concurrency() {
        let l = limits(Spec {
            requests: Some(RateSpec {
                per_second: 2.0,
                burst: 2,
            }),
            concurrency: Some(ConcurrencySpec {
                max: 1,
                queue: 1,
                queue_timeout: Duration::from_millis(100),
            }),
            tokens: None,
        });
        let first = l.admit_estimate(S, Estimate::default()).await.unwrap();
        // a second waits in the queue for the slot, times out, and its request-rate
        // unit is given back
        let d = l
            .admit_estimate(S, Estimate::default())
            .await
            .err()
            .unwrap();
        assert_eq!(d.kind, DeniedKind::Concurrency { max: 1 });
        drop(first);
        let _second = l.admit_estimate(S, Estimate::default()).await.unwrap();
        let d = l
            .admit_estimate(S, Estimate::default())
            .await
            .err()
            .unwrap();
        assert_eq!(d.kind, DeniedKind::Requests { limit: 2 });
        assert!(d.retry_after > Duration::ZERO);
    }
}

/// `x-ratelimit-reset-*` durations the way OpenAI writes them: `20ms`, `1.5s`, `6m0s`.
pub fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let s = format!("{secs:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return format!("{s}s");
    }
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else {
        format!("{m}m{s}s")
    }
}

#[cfg(test)]
#[test]
fn openai_durations() {
    assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
    assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
    assert_eq!(openai_duration(Duration::from_secs(2)), "2s");
    assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
    assert_eq!(openai_duration(Duration::from_secs(3725)), "1h2m5s");
}

//! Budgets shared by every replica through Redis, without a Redis call per request.
//!
//! ```text
//!   Redis: one GCRA per (rule, scope value)     key  PREFIX + rule|tenant=..|..:requests
//!          the TAT in µs on Redis's own clock (TIME), so replicas' clocks do not matter
//!
//!   each sidecar holds a lease: a local slice of units already taken from Redis
//!     admission     slice >= n ? slice -= n                      one atomic, no I/O
//!     low water     slice < lease/2 → one background refill       (single flight)
//!     slice spent   one refill in line (the caller waits for it); Redis says how long
//!                   until enough is free when it is not
//!     refund        slice += n; a slice above 2 × lease gives the excess back
//!     Redis down    serve what the slice holds, then `on_backend_failure`:
//!                   allow (admit, counted) or deny (503); retry the connection every
//!                   second, by itself
//! ```
//!
//! Units leased are taken from the shared budget before anyone spends them, so the
//! replicas together never admit more than the budget; at most one lease per replica
//! sits unused in a slice (less available to the others, never more spent).

use super::gcra::now_ns;
use crate::config::schema::BackendFailure;
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Takes up to `want` units when at least `need` are free; else says how long until
/// `need` would be. KEYS[1] the TAT; ARGV interval µs, tolerance µs, want, need.
/// Returns {granted, wait µs}.
const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local need = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local free = math.floor((now + tolerance - tat) / interval)
if free < 0 then free = 0 end
if free < need then
  return {0, math.ceil(tat + need * interval - tolerance - now)}
end
local grant = math.min(want, free)
tat = tat + grant * interval
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {grant, 0}
"#;

/// Gives `n` units back. KEYS[1] the TAT; ARGV interval µs, n.
const GIVE_BACK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat <= now then return 0 end
local new = tat - tonumber(ARGV[2]) * tonumber(ARGV[1])
if new < now then new = now end
redis.call('SET', KEYS[1], string.format('%.3f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return 1
"#;

/// After a failed call, calls wait this long before trying the backend again.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct BackendMetrics {
    /// 1 while the last call succeeded.
    pub up: IntGauge,
    pub errors: IntCounter,
    /// Leases taken (refills that got units).
    pub leases: IntCounter,
    /// Requests admitted by `on_backend_failure: allow` with the backend down.
    pub failed_open: IntCounter,
}

/// One Redis, shared by every rule (and every snapshot using the same settings).
pub struct Backend {
    client: redis::Client,
    /// `host:port/db`, never the password.
    shown: String,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// On the limiter clock: no calls before this (the backend just failed).
    quiet_until: AtomicU64,
    /// 0 not tried yet, 1 up, 2 down: each change is logged once.
    health: AtomicU8,
    pub policy: BackendFailure,
    timeout: Duration,
    prefix: String,
    take: redis::Script,
    give_back: redis::Script,
    metrics: Option<BackendMetrics>,
}

/// A reply to a refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Units added to the slice.
    Units(u64),
    /// Not enough free: how long until there is.
    Wait(Duration),
}

/// The settings a backend is made from (and reused across reloads by).
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSpec {
    pub url: String,
    pub policy: BackendFailure,
    pub timeout: Duration,
    pub prefix: String,
}

impl Backend {
    /// Checks the URL; connects later, on first use.
    pub fn new(spec: &BackendSpec, metrics: Option<BackendMetrics>) -> Result<Backend, String> {
        let info: redis::ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info(spec.url.as_str()).map_err(|e| {
                // the URL may hold a password: describe, never echo
                format!(
                    "not a usable Redis URL ({}); write redis://[user:password@]host:port[/db]",
                    e.category()
                )
            })?;
        let shown = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => {
                format!("redis://{host}:{port}/{}", info.redis_settings().db())
            }
            _ => {
                return Err(
                    "only redis:// URLs are supported (no TLS or unix sockets yet); put a TLS tunnel beside the sidecar for a TLS-only Redis"
                        .into(),
                )
            }
        };
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        if let Some(m) = &metrics {
            m.up.set(0);
        }
        Ok(Backend {
            client,
            shown,
            conn: tokio::sync::Mutex::new(None),
            quiet_until: AtomicU64::new(0),
            health: AtomicU8::new(0),
            policy: spec.policy,
            timeout: spec.timeout,
            prefix: spec.prefix.clone(),
            take: redis::Script::new(TAKE),
            give_back: redis::Script::new(GIVE_BACK),
            metrics,
        })
    }

    /// Where it points, without credentials.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn key(&self, label: &str, what: &str) -> String {
        format!("{}{label}:{what}", self.prefix)
    }

    /// True while calls are held back after a failure.
    pub fn resting(&self) -> bool {
        now_ns() < self.quiet_until.load(Ordering::Relaxed)
    }

    pub fn failed_open(&self) {
        if let Some(m) = &self.metrics {
            m.failed_open.inc();
        }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(backend = %self.shown, "limits backend connected");
        *slot = Some(c.clone());
        Ok(c)
    }

    fn failed(&self, what: &str, e: &str) {
        let was = self.health.swap(2, Ordering::AcqRel);
        if let Some(m) = &self.metrics {
            m.errors.inc();
            m.up.set(0);
        }
        self.quiet_until.store(
            now_ns() + u64::try_from(RECONNECT_EVERY.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if was != 2 {
            tracing::warn!(backend = %self.shown, error = %e, "limits backend unreachable ({what}); serving from local leases, then on_backend_failure applies");
        } else {
            tracing::debug!(backend = %self.shown, error = %e, "limits backend still unreachable ({what})");
        }
    }

    fn succeeded(&self) {
        if self.health.swap(1, Ordering::AcqRel) == 2 {
            tracing::info!(backend = %self.shown, "limits backend reachable again");
        }
        if let Some(m) = &self.metrics {
            m.up.set(1);
        }
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        what: &str,
        inv: redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        if self.resting() {
            return None;
        }
        let mut c = match self.connection().await {
            Ok(c) => c,
            Err(e) => {
                self.failed(what, &e);
                return None;
            }
        };
        match tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut c)).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Some(v)
            }
            Ok(Err(e)) => {
                // the connection may be broken: the next call dials again
                *self.conn.lock().await = None;
                self.failed(what, &e.to_string());
                None
            }
            Err(_) => {
                *self.conn.lock().await = None;
                self.failed(what, "timed out");
                None
            }
        }
    }

    /// Takes up to `want` units from `key`'s budget if at least `need` are free.
    /// `None`: the backend could not be asked.
    pub async fn take(
        &self,
        key: &str,
        interval_us: f64,
        tolerance_us: f64,
        want: u64,
        need: u64,
    ) -> Option<Grant> {
        let mut inv = self.take.prepare_invoke();
        inv.key(key)
            .arg(interval_us)
            .arg(tolerance_us)
            .arg(want)
            .arg(need);
        let (granted, wait_us): (i64, i64) = self.call("lease", inv).await?;
        if granted > 0 {
            if let Some(m) = &self.metrics {
                m.leases.inc();
            }
            Some(Grant::Units(granted as u64))
        } else {
            Some(Grant::Wait(Duration::from_micros(wait_us.max(1) as u64)))
        }
    }

    pub async fn give_back(&self, key: &str, interval_us: f64, n: u64) -> bool {
        let mut inv = self.give_back.prepare_invoke();
        inv.key(key).arg(interval_us).arg(n);
        self.call::<i64>("give back", inv).await.is_some()
    }
}

/// Why a shared take failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The shared budget is spent: retry after this.
    Wait(Duration),
    /// The backend is unreachable, the slice is spent and the policy is `deny`.
    BackendDown,
}

/// This sidecar's lease on one shared budget.
pub struct Lease {
    backend: Arc<Backend>,
    key: String,
    interval_us: f64,
    tolerance_us: f64,
    /// Units per refill.
    size: u64,
    /// Units this sidecar may spend without asking (negative: a debt to pay first).
    slice: AtomicI64,
    refilling: AtomicBool,
    /// One refill at a time.
    refill: tokio::sync::Mutex<()>,
}

impl Lease {
    /// `capacity` units refilled every `period`, leased `share` at a time.
    pub fn new(
        backend: Arc<Backend>,
        key: String,
        capacity: u64,
        period: Duration,
        share: f64,
    ) -> Lease {
        let capacity = capacity.max(1);
        let period_us = period.as_secs_f64() * 1e6;
        Lease {
            key,
            interval_us: period_us / capacity as f64,
            tolerance_us: period_us,
            size: ((capacity as f64 * share).ceil() as u64).clamp(1, capacity),
            slice: AtomicI64::new(0),
            refilling: AtomicBool::new(false),
            refill: tokio::sync::Mutex::new(()),
            backend,
        }
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Units in the local slice.
    pub fn slice(&self) -> i64 {
        self.slice.load(Ordering::Acquire)
    }

    fn take_local(&self, n: u64) -> bool {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.slice
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s >= n).then_some(s - n)
            })
            .is_ok()
    }

    /// Tops the slice up in the background when it runs low.
    fn top_up(self: &Arc<Self>) {
        if self.slice() >= (self.size / 2) as i64 || self.backend.resting() {
            return;
        }
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.refilling.store(false, Ordering::Release);
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let _ = me.refill_now(1).await;
            me.refilling.store(false, Ordering::Release);
        });
    }

    /// Asks the backend for a lease that leaves at least `need` units in the slice.
    async fn refill_now(&self, need: u64) -> Option<Grant> {
        let _one = self.refill.lock().await;
        let have = self.slice();
        let missing = u64::try_from(i64::try_from(need).unwrap_or(i64::MAX) - have).unwrap_or(0);
        if missing == 0 {
            return Some(Grant::Units(0));
        }
        let want = missing.max(self.size);
        let g = self
            .backend
            .take(
                &self.key,
                self.interval_us,
                self.tolerance_us,
                want,
                missing,
            )
            .await?;
        if let Grant::Units(granted) = g {
            self.slice
                .fetch_add(i64::try_from(granted).unwrap_or(i64::MAX), Ordering::AcqRel);
        }
        Some(g)
    }

    /// Takes `n` units: from the slice when it holds them (no I/O), else after a refill.
    pub async fn take(self: &Arc<Self>, n: u64) -> Result<(), Refused> {
        self.take_or_check(n, true).await
    }

    /// Admits while the budget is not spent, taking nothing (after-the-fact accounting).
    pub async fn check(self: &Arc<Self>) -> Result<(), Refused> {
        self.take_or_check(1, false).await
    }

    async fn take_or_check(self: &Arc<Self>, n: u64, take: bool) -> Result<(), Refused> {
        let local = |l: &Lease| {
            if take {
                l.take_local(n)
            } else {
                l.slice() >= n as i64
            }
        };
        for _ in 0..3 {
            if local(self) {
                self.top_up();
                return Ok(());
            }
            match self.refill_now(n).await {
                Some(Grant::Units(_)) => continue,
                Some(Grant::Wait(w)) => return Err(Refused::Wait(w)),
                None => {
                    return match self.backend.policy {
                        BackendFailure::Allow => {
                            self.backend.failed_open();
                            Ok(())
                        }
                        BackendFailure::Deny => Err(Refused::BackendDown),
                    }
                }
            }
        }
        // others spent each refill before this caller could: the budget is contended
        Err(Refused::Wait(Duration::from_micros(
            (self.interval_us * n as f64).ceil() as u64,
        )))
    }

    /// The units left that a request could take now (for clamping): the slice after
    /// a refill.
    pub async fn left(self: &Arc<Self>) -> u64 {
        if self.slice() < self.size as i64 {
            let _ = self.refill_now(self.size).await;
        }
        self.slice().max(0) as u64
    }

    /// Charges `n` more units (usage above the reservation); a debt is paid by the
    /// next refills.
    pub fn charge(self: &Arc<Self>, n: u64) {
        self.slice
            .fetch_sub(i64::try_from(n).unwrap_or(i64::MAX), Ordering::AcqRel);
        self.top_up();
    }

    /// Gives `n` units back to the slice; a slice grown past two leases returns the
    /// excess to the shared budget.
    pub fn refund(self: &Arc<Self>, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let now = self.slice.fetch_add(n, Ordering::AcqRel) + n;
        let keep = i64::try_from(self.size).unwrap_or(i64::MAX);
        if now <= keep.saturating_mul(2) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let excess = now - keep;
        if self
            .slice
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s >= excess).then_some(s - excess)
            })
            .is_err()
        {
            return;
        }
        let me = self.clone();
        rt.spawn(async move {
            if !me
                .backend
                .give_back(&me.key, me.interval_us, excess as u64)
                .await
            {
                // keep them here rather than lose them
                me.slice.fetch_add(excess, Ordering::AcqRel);
            }
        });
    }
}

impl Drop for Lease {
    /// A lease no snapshot uses (its rule changed or went away) returns what it holds.
    fn drop(&mut self) {
        let left = self.slice.load(Ordering::Acquire);
        if left <= 0 {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = self.backend.clone();
        let key = std::mem::take(&mut self.key);
        let interval = self.interval_us;
        rt.spawn(async move {
            backend.give_back(&key, interval, left as u64).await;
        });
    }
}

//! Key pools: several keys for one provider, with names and weights.
//!
//! - `round_robin` takes the keys in turn; `weighted` gives each key a share of requests
//!   proportional to its weight (a key of weight 3 takes three turns for every one of a key
//!   of weight 1).
//! - A key the provider answers 401/403 for is ejected until the next reload.
//! - A key the provider answers 429 for cools down for the response's `Retry-After`
//!   (or the pool's default cooldown).
//! - Unavailable keys are skipped. With none left the request is refused with 503 and a
//!   `Retry-After` (the nearest cooldown end, or a minute when every key is ejected).
//!
//! State is per key and atomic: picking a key takes no lock. The pool belongs to one
//! config snapshot, so a reload (with rotated keys, say) starts every key fresh.
//! Metrics and logs name keys by their configured name only.

use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    Weighted,
}

/// Per-key metric handles.
#[derive(Clone)]
pub struct KeyMetrics {
    pub requests: IntCounter,
    pub ejected: IntCounter,
    pub cooldowns: IntCounter,
    /// 1 while ejected.
    pub ejected_now: IntGauge,
    /// Unix time the current cooldown ends (0: none).
    pub cooldown_until: IntGauge,
}

struct Slot {
    name: Arc<str>,
    ejected: AtomicBool,
    /// Milliseconds since the pool's epoch until which the key rests.
    resting_until_ms: AtomicU64,
    metrics: Option<KeyMetrics>,
}

pub struct KeyPool {
    provider: Arc<str>,
    slots: Box<[Slot]>,
    strategy: Strategy,
    /// Weighted: cumulative weights, to map a turn to a key.
    cumulative: Box<[u64]>,
    total_weight: u64,
    turn: AtomicUsize,
    epoch: Instant,
    default_cooldown: Duration,
}

impl std::fmt::Debug for KeyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.slots.iter().map(|s| &*s.name).collect();
        write!(f, "KeyPool({:?}, {names:?})", self.strategy)
    }
}

impl KeyPool {
    /// More than one key: a key refused by the provider can be retried with another.
    pub fn has_alternatives(&self) -> bool {
        self.slots.len() > 1
    }

    /// Whether a key other than `except` could take a request now, or when the first of
    /// them comes back from its cooldown.
    pub fn others(&self, except: usize) -> Others {
        let now = self.now_ms();
        let mut soonest: Option<u64> = None;
        for (i, s) in self.slots.iter().enumerate() {
            if i == except || s.ejected.load(Ordering::Relaxed) {
                continue;
            }
            let until = s.resting_until_ms.load(Ordering::Relaxed);
            if until <= now {
                return Others::Free;
            }
            soonest = Some(soonest.map_or(until, |x| x.min(until)));
        }
        match soonest {
            Some(until) => Others::CoolingFor(Duration::from_millis(until - now)),
            None => Others::None,
        }
    }

    /// How long a key answered 429 with this `Retry-After` rests.
    pub fn cooldown(&self, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or(self.default_cooldown)
    }
}

/// The rest of a pool, seen from one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Others {
    /// Another key is available now.
    Free,
    /// Every other key that is not ejected is cooling down; the first is back after this.
    CoolingFor(Duration),
    /// No other key (the only one, or the rest are ejected).
    None,
}

#[derive(Debug, Clone)]
pub struct KeyPoolUnavailable {
    pub retry_after: Duration,
    pub detail: String,
}

/// A key's description for building a pool.
pub struct KeySpec {
    pub name: Arc<str>,
    pub weight: u32,
    pub metrics: Option<KeyMetrics>,
}

/// When every key is ejected nothing changes until a reload; tell clients to come back in
/// a minute.
const ALL_EJECTED_RETRY_AFTER: Duration = Duration::from_secs(60);

impl KeyPool {
    pub fn new(
        provider: Arc<str>,
        keys: Vec<KeySpec>,
        strategy: Strategy,
        default_cooldown: Duration,
    ) -> KeyPool {
        let mut cumulative = Vec::with_capacity(keys.len());
        let mut total = 0u64;
        let slots: Vec<Slot> = keys
            .into_iter()
            .map(|k| {
                total += u64::from(k.weight.max(1));
                cumulative.push(total);
                Slot {
                    name: k.name,
                    ejected: AtomicBool::new(false),
                    resting_until_ms: AtomicU64::new(0),
                    metrics: k.metrics,
                }
            })
            .collect();
        for s in &slots {
            if let Some(m) = &s.metrics {
                m.ejected_now.set(0);
                m.cooldown_until.set(0);
            }
        }
        KeyPool {
            provider,
            slots: slots.into(),
            strategy,
            cumulative: cumulative.into(),
            total_weight: total.max(1),
            turn: AtomicUsize::new(0),
            epoch: Instant::now(),
            default_cooldown,
        }
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn provider(&self) -> &Arc<str> {
        &self.provider
    }

    pub fn name(&self, i: usize) -> Arc<str> {
        self.slots[i].name.clone()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn available(&self, i: usize, now_ms: u64) -> bool {
        let s = &self.slots[i];
        !s.ejected.load(Ordering::Relaxed) && s.resting_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// The key for the next request.
    pub fn pick(&self) -> Result<usize, KeyPoolUnavailable> {
        self.pick_except(&[])
    }

    /// The key for the next request, other than the `tried` ones (which a key-scoped
    /// limit refused).
    pub fn pick_except(&self, tried: &[usize]) -> Result<usize, KeyPoolUnavailable> {
        let n = self.slots.len();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let first = match self.strategy {
            Strategy::RoundRobin => turn % n,
            Strategy::Weighted => {
                let point = (turn as u64) % self.total_weight;
                self.cumulative.partition_point(|&c| c <= point)
            }
        };
        let now = self.now_ms();
        for k in 0..n {
            let i = (first + k) % n;
            if !tried.contains(&i) && self.available(i, now) {
                if let Some(m) = &self.slots[i].metrics {
                    m.requests.inc();
                }
                return Ok(i);
            }
        }
        Err(self.unavailable(now))
    }

    fn unavailable(&self, now_ms: u64) -> KeyPoolUnavailable {
        let mut ejected = 0;
        let mut soonest: Option<u64> = None;
        for s in self.slots.iter() {
            if s.ejected.load(Ordering::Relaxed) {
                ejected += 1;
            } else {
                let until = s.resting_until_ms.load(Ordering::Relaxed);
                soonest = Some(soonest.map_or(until, |x| x.min(until)));
            }
        }
        let cooling = self.slots.len() - ejected;
        let retry_after = match soonest {
            Some(until) => {
                Duration::from_millis(until.saturating_sub(now_ms)).max(Duration::from_secs(1))
            }
            None => ALL_EJECTED_RETRY_AFTER,
        };
        KeyPoolUnavailable {
            retry_after,
            detail: format!("{ejected} ejected after 401/403, {cooling} cooling down after 429"),
        }
    }

    /// Applies an upstream answer to the key that got it.
    pub fn feedback(&self, i: usize, status: u16, retry_after: Option<Duration>) {
        let Some(s) = self.slots.get(i) else { return };
        match status {
            401 | 403 if !s.ejected.swap(true, Ordering::Relaxed) => {
                tracing::warn!(
                    provider = %self.provider,
                    key = %s.name,
                    status,
                    "key ejected: the provider refused it; it stays out until the config is reloaded"
                );
                if let Some(m) = &s.metrics {
                    m.ejected.inc();
                    m.ejected_now.set(1);
                }
            }
            429 => {
                let rest = retry_after.unwrap_or(self.default_cooldown);
                let until = self
                    .now_ms()
                    .saturating_add(u64::try_from(rest.as_millis()).unwrap_or(u64::MAX));
                s.resting_until_ms.fetch_max(until, Ordering::Relaxed);
                tracing::info!(provider = %self.provider, key = %s.name, cooldown = ?rest, "key cooling down after 429");
                if let Some(m) = &s.metrics {
                    m.cooldowns.inc();
                    let end = SystemTime::now() + rest;
                    let secs = end.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    m.cooldown_until
                        .set(i64::try_from(secs).unwrap_or(i64::MAX));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[u32], strategy: Strategy) -> KeyPool {
        let keys = weights
            .iter()
            .enumerate()
            .map(|(i, w)| KeySpec {
                name: Arc::from(format!("k{i}")),
                weight: *w,
                metrics: None,
            })
            .collect();
        KeyPool::new(Arc::from("p"), keys, strategy, Duration::from_secs(30))
    }

    #[test]
    fn round_robin_and_weights() {
        let p = pool(&[1, 1, 1], Strategy::RoundRobin);
        let picks: Vec<usize> = (0..6).map(|_| p.pick().unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let p = pool(&[3, 1], Strategy::Weighted);
        let picks: Vec<usize> = (0..8).map(|_| p.pick().unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 2);
    }

    #[test]
    fn ejection_cooldown_and_exhaustion() {
        let p = pool(&[1, 1], Strategy::RoundRobin);
        p.feedback(0, 401, None);
        assert!(
            (0..4).all(|_| p.pick().unwrap() == 1),
            "ejected key skipped"
        );
        p.feedback(1, 429, Some(Duration::from_millis(300)));
        let e = p.pick().unwrap_err();
        assert!(e.retry_after >= Duration::from_secs(1), "{e:?}");
        assert!(
            e.detail.contains("1 ejected") && e.detail.contains("1 cooling"),
            "{}",
            e.detail
        );
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(p.pick().unwrap(), 1, "cooldown over");
        p.feedback(1, 403, None);
        assert_eq!(p.pick().unwrap_err().retry_after, ALL_EJECTED_RETRY_AFTER);
        p.feedback(0, 200, None);
        p.feedback(7, 401, None); // out of range: ignored
    }

    #[test]
    fn what_the_other_keys_can_do() {
        let p = pool(&[1, 1, 1], Strategy::RoundRobin);
        assert_eq!(p.others(0), Others::Free);
        p.feedback(1, 429, Some(Duration::from_secs(20)));
        p.feedback(2, 429, Some(Duration::from_secs(5)));
        match p.others(0) {
            Others::CoolingFor(d) => {
                assert!(
                    d <= Duration::from_secs(5) && d > Duration::from_secs(4),
                    "{d:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.others(2), Others::Free, "key 0 is free");
        p.feedback(1, 401, None);
        p.feedback(2, 403, None);
        assert_eq!(p.others(0), Others::None, "the rest are ejected");
        assert_eq!(pool(&[1], Strategy::RoundRobin).others(0), Others::None);
        assert_eq!(p.cooldown(None), Duration::from_secs(30));
        assert_eq!(
            p.cooldown(Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
    }
}

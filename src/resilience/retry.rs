//! Which failures are retried, how long to wait, and the retry budget.

use crate::limits::gcra::{self, Gcra};
use crate::proxy::errors::Cause;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Statuses worth another try: rate limited, or the provider failed or is overloaded
/// (Anthropic's 529). 400, 401, 403, 404, 413 and 422 are the request's own fault.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504 | 529)
}

/// Failures before any response byte that a new attempt may fix.
pub fn retryable_cause(cause: Cause) -> bool {
    matches!(
        cause,
        Cause::UpstreamConnect | Cause::ConnectTimeout | Cause::UpstreamReset | Cause::UpstreamDns
    )
}

/// The label for `llm_sidecar_retries_total{reason}`.
pub fn reason_for_status(status: u16) -> &'static str {
    match status {
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        529 => "529",
        401 => "401",
        403 => "403",
        _ => "other",
    }
}

pub fn reason_for_cause(cause: Cause) -> &'static str {
    match cause {
        Cause::UpstreamConnect => "connect",
        Cause::ConnectTimeout => "connect_timeout",
        Cause::UpstreamReset => "reset",
        Cause::UpstreamDns => "dns",
        _ => "other",
    }
}

/// When the next attempt may go out, as far as the answer that asked for it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// At once: the refusal was about a key, and another key of the pool is free.
    Now,
    /// The backoff, but at least this long (the provider's `Retry-After`, or the time
    /// until a key of the pool is back from its cooldown).
    AtLeast(Duration),
    /// The backoff alone.
    Backoff,
}

/// The wait before retrying an answer with `status` and `retry_after`.
///
/// A 429's `Retry-After` (and a 401/403) is about the key that was refused, not the
/// request: when the attempt used a key of a pool (`others`: what the rest of the pool
/// can do), another free key is tried at once, and with every other key cooling down the
/// wait is the earliest that one of them, or the refused key, is back. `None` means the
/// answer is not retried on another key (`Retry-After` as before). `cooldown` is how long
/// the refused key rests.
pub fn wait_after(
    status: u16,
    retry_after: Option<Duration>,
    others: Option<crate::auth::keys::Others>,
    cooldown: Duration,
) -> Option<Wait> {
    use crate::auth::keys::Others;
    let about_the_key = matches!(status, 429 | 401 | 403);
    match (about_the_key, others) {
        (true, Some(Others::Free)) => Some(Wait::Now),
        (true, Some(Others::CoolingFor(d))) if status == 429 => {
            Some(Wait::AtLeast(d.min(cooldown)))
        }
        (true, Some(Others::CoolingFor(d))) => Some(Wait::AtLeast(d)),
        // 401/403 with no other key: the refused key is out, nothing to retry with.
        (true, Some(Others::None)) if status != 429 => None,
        _ => Some(retry_after.map_or(Wait::Backoff, Wait::AtLeast)),
    }
}

/// A route's retry settings (compiled).
#[derive(Debug)]
pub struct RetryPolicy {
    /// Attempts per target, the first included (1: no retries).
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A `Retry-After` longer than this is not waited for: the answer goes to the client.
    pub retry_after_max: Duration,
    pub budget: RetryBudget,
}

impl RetryPolicy {
    /// The wait before retry number `n` (1 for the first retry): full jitter over an
    /// exponential backoff, but at least the provider's `Retry-After`.
    pub fn backoff(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
            .min(self.backoff_max);
        let jitter = Duration::from_nanos(random_below(exp.as_nanos() as u64 + 1));
        match retry_after {
            Some(ra) => jitter.max(ra),
            None => jitter,
        }
    }
}

fn random_below(n: u64) -> u64 {
    if n <= 1 {
        return 0;
    }
    getrandom::u64().map_or(n / 2, |r| r % n)
}

/// Retries may add at most `ratio` of the traffic (plus a small floor per second, so a
/// quiet route can still retry). Each request deposits `ratio` of a retry; each retry
/// withdraws one. A storm of failures drains it and retries stop, instead of multiplying
/// the load on a struggling provider.
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a retry.
    balance: AtomicI64,
    deposit: i64,
    max: i64,
    floor: Option<Gcra>,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32) -> RetryBudget {
        let deposit = (ratio.clamp(0.0, 10.0) * 1000.0).round() as i64;
        RetryBudget {
            balance: AtomicI64::new(0),
            deposit,
            // At most 100 retries saved up: a long quiet spell does not bank a storm.
            max: 100_000,
            floor: (min_per_second > 0)
                .then(|| Gcra::new(u64::from(min_per_second), Duration::from_secs(1))),
        }
    }

    /// One request went out.
    pub fn deposit(&self) {
        if self.deposit == 0 {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b + self.deposit).min(self.max))
            });
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        if let Some(f) = &self.floor {
            if f.try_take(gcra::now_ns(), 1).is_ok() {
                return true;
            }
        }
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        for s in [429, 500, 502, 503, 504, 529] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 413, 422] {
            assert!(!retryable_status(s), "{s}");
        }
        assert!(retryable_cause(Cause::UpstreamConnect));
        assert!(!retryable_cause(Cause::FirstByteTimeout));
        assert!(!retryable_cause(Cause::UpstreamTls));
    }

    #[test]
    fn backoff_is_jittered_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(400),
            retry_after_max: Duration::from_secs(10),
            budget: RetryBudget::new(0.2, 0),
        };
        for n in 1..8 {
            let cap = Duration::from_millis(100 * (1 << (n - 1))).min(Duration::from_millis(400));
            let waits: Vec<f64> = (0..400)
                .map(|_| {
                    let d = p.backoff(n, None);
                    assert!(d <= cap, "{n}: {d:?}");
                    d.as_secs_f64() / cap.as_secs_f64()
                })
                .collect();
            // Full jitter: spread uniformly over [0, cap], so retries of many clients do
            // not come back together. A constant wait (0, the cap, or anything between)
            // fails; with 400 draws each bound is many standard deviations wide.
            let min = waits.iter().cloned().fold(f64::MAX, f64::min);
            let max = waits.iter().cloned().fold(0.0, f64::max);
            let mean = waits.iter().sum::<f64>() / waits.len() as f64;
            assert!(
                min < 0.1 && max > 0.9,
                "{n}: spread {min:.3}..{max:.3} of the cap"
            );
            assert!((0.4..0.6).contains(&mean), "{n}: mean {mean:.3} of the cap");
            let quarters = waits.iter().fold([0; 4], |mut q, w| {
                q[((w * 4.0) as usize).min(3)] += 1;
                q
            });
            assert!(quarters.iter().all(|&c| c > 60), "{n}: {quarters:?}");
        }
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_refused_key_is_replaced_at_once_when_another_is_free() {
        use crate::auth::keys::Others;
        let s = Duration::from_secs;
        let cool = s(30);
        // another key free: now, whatever the refused key's Retry-After
        for status in [429, 401, 403] {
            assert_eq!(
                wait_after(status, Some(s(2)), Some(Others::Free), cool),
                Some(Wait::Now)
            );
        }
        assert_eq!(
            wait_after(429, Some(s(3600)), Some(Others::Free), cool),
            Some(Wait::Now),
            "a Retry-After past the cap belongs to the key"
        );
        // every other key cooling: the earliest of them or the refused key
        assert_eq!(
            wait_after(429, Some(s(2)), Some(Others::CoolingFor(s(5))), s(2)),
            Some(Wait::AtLeast(s(2)))
        );
        assert_eq!(
            wait_after(429, Some(s(9)), Some(Others::CoolingFor(s(1))), s(9)),
            Some(Wait::AtLeast(s(1)))
        );
        assert_eq!(
            wait_after(403, None, Some(Others::CoolingFor(s(4))), cool),
            Some(Wait::AtLeast(s(4)))
        );
        // one key (or the rest ejected): its own Retry-After, as before
        assert_eq!(
            wait_after(429, Some(s(2)), Some(Others::None), s(2)),
            Some(Wait::AtLeast(s(2)))
        );
        assert_eq!(wait_after(401, None, Some(Others::None), cool), None);
        // not about a key, or no pool: the provider's Retry-After, else the backoff
        assert_eq!(
            wait_after(503, Some(s(1)), Some(Others::Free), cool),
            Some(Wait::AtLeast(s(1)))
        );
        assert_eq!(wait_after(500, None, None, cool), Some(Wait::Backoff));
        assert_eq!(
            wait_after(429, Some(s(2)), None, cool),
            Some(Wait::AtLeast(s(2)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_limits_retries_to_a_share_of_traffic() {
        let b = RetryBudget::new(0.2, 0);
        assert!(!b.withdraw(), "nothing deposited yet");
        for _ in 0..100 {
            b.deposit();
        }
        let allowed = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(allowed, 20);
        let floor = RetryBudget::new(0.0, 2);
        assert!(floor.withdraw() && floor.withdraw());
        assert!(!floor.withdraw());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(floor.withdraw());
    }
}

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
            for _ in 0..50 {
                let d = p.backoff(n, None);
                let cap =
                    Duration::from_millis(100 * (1 << (n - 1))).min(Duration::from_millis(400));
                assert!(d <= cap, "{n}: {d:?}");
            }
        }
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
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

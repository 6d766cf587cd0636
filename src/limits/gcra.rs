//! GCRA (the generic cell rate algorithm): a token bucket kept in one atomic.
//!
//! Instead of a token count and a refill time (two values, so a lock or a double-width
//! CAS), GCRA stores the *theoretical arrival time* (TAT): when the bucket would be full
//! again if nothing else arrived. Taking `n` units moves it `n × interval` later; a take
//! is refused when that would put it more than `tolerance` ahead of now. Full bucket =
//! TAT ≤ now. One `compare_exchange` per admission, no lock, exact under contention.
//!
//! ```text
//!  rate r/s, burst b:   interval = 1/r,  tolerance = interval × b
//!  take n at now:       tat' = max(tat, now) + n × interval
//!                       ok if tat' - now ≤ tolerance, else retry after tat' - now - tolerance
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Nanoseconds on the process's limiter clock (Tokio's, so tests can pause it).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| {
        // Start far enough in so `now - tolerance` never underflows.
        tokio::time::Instant::now()
    });
    let d = tokio::time::Instant::now().saturating_duration_since(epoch);
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX) + (1 << 50)
}

#[derive(Debug)]
pub struct Gcra {
    tat: AtomicU64,
    /// Nanoseconds one unit adds.
    interval: u64,
    /// How far ahead of now the TAT may run: the burst.
    tolerance: u64,
}

/// What an admission saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Units that could be taken right now.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

impl Gcra {
    /// `capacity` units, refilled completely every `period`.
    pub fn new(capacity: u64, period: Duration) -> Gcra {
        let capacity = capacity.max(1);
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
        let interval = (period_ns / capacity).max(1);
        Gcra {
            tat: AtomicU64::new(0),
            interval,
            tolerance: interval.saturating_mul(capacity),
        }
    }

    /// Takes `n` units, or says how long until it could.
    pub fn try_take(&self, now: u64, n: u64) -> Result<Snapshot, Duration> {
        let cost = n.saturating_mul(self.interval);
        let mut cur = self.tat.load(Ordering::Acquire);
        loop {
            let tat = cur.max(now);
            let new = tat.saturating_add(cost);
            let ahead = new - now;
            if ahead > self.tolerance {
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            match self
                .tat
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(self.snapshot_at(new, now)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Admits while the bucket is not already overdrawn, charging nothing yet (the
    /// after-the-fact accounting some gateways use; see `charge`).
    pub fn check(&self, now: u64) -> Result<Snapshot, Duration> {
        let tat = self.tat.load(Ordering::Acquire).max(now);
        let ahead = tat - now;
        if ahead >= self.tolerance {
            return Err(Duration::from_nanos(ahead - self.tolerance + self.interval));
        }
        Ok(self.snapshot_at(tat, now))
    }

    /// Takes `n` units whatever the balance (a debt delays later admissions).
    pub fn charge(&self, now: u64, n: u64) {
        let cost = n.saturating_mul(self.interval);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                Some(cur.max(now).saturating_add(cost))
            });
    }

    /// Gives back `n` units taken earlier (never more than a full bucket).
    pub fn refund(&self, now: u64, n: u64) {
        let cost = n.saturating_mul(self.interval);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                Some(cur.saturating_sub(cost).max(now.min(cur)))
            });
    }

    pub fn snapshot(&self, now: u64) -> Snapshot {
        self.snapshot_at(self.tat.load(Ordering::Acquire).max(now), now)
    }

    fn snapshot_at(&self, tat: u64, now: u64) -> Snapshot {
        let ahead = tat.saturating_sub(now);
        Snapshot {
            remaining: self.tolerance.saturating_sub(ahead) / self.interval,
            reset: Duration::from_nanos(ahead),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_rate() {
        let g = Gcra::new(5, Duration::from_secs(1)); // 5/s, burst 5
        let t0 = 10 * S;
        for i in 0..5 {
            let s = g.try_take(t0, 1).unwrap();
            assert_eq!(s.remaining, 4 - i);
        }
        let wait = g.try_take(t0, 1).unwrap_err();
        assert_eq!(wait, Duration::from_millis(200));
        // 200 ms later one more fits, then none.
        g.try_take(t0 + S / 5, 1).unwrap();
        assert!(g.try_take(t0 + S / 5, 1).is_err());
        // After a full second the bucket is full again.
        assert_eq!(g.snapshot(t0 + 2 * S).remaining, 5);
    }

    #[test]
    fn reserve_refund_and_debt() {
        let g = Gcra::new(1000, Duration::from_secs(60));
        let t = 100 * S;
        g.try_take(t, 800).unwrap();
        assert_eq!(g.snapshot(t).remaining, 200);
        assert!(g.try_take(t, 300).is_err());
        g.refund(t, 500); // used 300 of the 800 reserved
        assert_eq!(g.snapshot(t).remaining, 700);
        g.refund(t, 10_000); // never above full
        assert_eq!(g.snapshot(t).remaining, 1000);
        g.charge(t, 1500); // more than the budget: a debt
        assert_eq!(g.snapshot(t).remaining, 0);
        assert!(g.check(t).is_err());
        assert!(g.check(t + 31 * S).is_ok());
    }

    #[test]
    fn exact_under_contention() {
        let g = std::sync::Arc::new(Gcra::new(10_000, Duration::from_secs(3600)));
        let t = 5 * S;
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..5000).filter(|_| g.try_take(t, 1).is_ok()).count())
            })
            .collect();
        let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(admitted, 10_000);
    }
}
